# common/ — private helpers every layer shares: the log hook, error text and
# the version, time helpers.  Part of librdmamig.  Includes only include/;
# must never include a layer's header.
LIB_OBJS += common/log.o
LIB_OBJS += common/error.o
