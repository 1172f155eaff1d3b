# common/ — private helpers every layer shares: the log hook, error text and
# the version, time helpers, and the test-only pause points (fault.c, driven
# by RDMAMIG_FAULT).  Part of librdmamig.  Includes only include/;
# must never include a layer's header.
LIB_OBJS += common/log.o
LIB_OBJS += common/error.o
LIB_OBJS += common/fault.o
