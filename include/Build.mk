# include/ — rdmamig.h, the one public header, and the symbol map that keeps
# everything else out of librdmamig.so.  No code lives here; common/ holds the
# private helpers every layer shares.
LIB_OBJS += common/log.o
LIB_OBJS += common/error.o
