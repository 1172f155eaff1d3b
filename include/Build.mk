# include/ — rdmamig.h, the one public header, and librdmamig.map, the symbol
# map that names every function librdmamig.so exports.  No code lives here and
# nothing here includes a header from another folder; common/ holds the
# private helpers every layer shares.
