# rdmamig — top-level Makefile.
#
# Each layer folder adds its objects in its own Build.mk (one object per line),
# so layers can grow without touching this file.  Quiet by default; `make V=1`
# shows full commands.  -Werror unless WERROR=0.  SANITIZE=1 builds with
# AddressSanitizer + UBSan (into build-asan/, so it never mixes with build/).
#
#   make            librdmamig.a and .so (the engine), librmvmm.a (the built-in
#                   VMM) and the rdmamig binary
#   make test       install what is missing, run host suites, then test-bed suites
#   make demo       a live migration of a busy guest over soft-RoCE
#   make check-asan the host suites under AddressSanitizer + UBSan
#   make check-valgrind  the host suites under valgrind memcheck
#   make fuzz       each libFuzzer target of fuzz/ for FUZZ_SECONDS (clang,
#                   into build-fuzz/); make fuzz-replay runs each corpus once
#   make deps       install build and test dependencies (apt-get, as root)
#   make install    PREFIX=/usr/local
#   make clean

PREFIX   ?= /usr/local
V        ?= 0
WERROR   ?= 1
SANITIZE ?= 0
# FUZZ=1: the libFuzzer build (fuzz/Build.mk): clang, ASan + UBSan, every
# object instrumented for coverage, into build-fuzz/.
FUZZ     ?= 0

CC       ?= cc
ifeq ($(FUZZ),1)
CC       := clang
endif
# Output folder; override (make O=build-mine) to build side by side.
ifeq ($(FUZZ),1)
O        ?= build-fuzz
else ifeq ($(SANITIZE),1)
O        ?= build-asan
else
O        ?= build
endif

CFLAGS   ?= -O2 -g
CFLAGS   += -std=gnu11 -fPIC -fvisibility=hidden -D_GNU_SOURCE
CFLAGS   += -MD -MP
CFLAGS   += -Iinclude -I.
WARNINGS += -Wall
WARNINGS += -Wextra
WARNINGS += -Wshadow
WARNINGS += -Wformat=2
WARNINGS += -Wmissing-prototypes
WARNINGS += -Wstrict-prototypes
WARNINGS += -Wno-unused-parameter
ifeq ($(WERROR),1)
WARNINGS += -Werror
endif
CFLAGS   += $(WARNINGS)
ifeq ($(SANITIZE),1)
CFLAGS   += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS  += -fsanitize=address,undefined
endif
ifeq ($(FUZZ),1)
CFLAGS   += -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer \
	    -fno-sanitize-recover=undefined
# GCC takes a struct ending in a flexible array inside another (kvm_msrs in
# kvm/state.c) without a word; clang names it a GNU extension.
CFLAGS   += -Wno-gnu-variable-sized-type-not-at-end
LDFLAGS  += -fsanitize=address,undefined
endif
# libcrypto (OpenSSL): HMAC-SHA256, RAND_bytes and CRYPTO_memcmp for peer
# authentication (transport/ctrl.c); libssl: TLS for the TCP transport
# (transport/tcp-tls.c, --tls).
LIBS     += -lrdmacm -libverbs -lnuma -lssl -lcrypto -lpthread

ifeq ($(V),1)
Q :=
quiet = @:
else
Q := @
quiet = @printf '  %-7s %s\n'
endif

# Two archives.  librdmamig is what an embedder loads: the engine, the
# transports with RDMA registration, and common/ — nothing of our VMM.
# librmvmm.a is the built-in VMM (kvm/ and the RAM backing of pinning/) that
# the CLI, the tests and the benches link beside it; it may call common/, so
# it comes first on their link lines.
LIB_A    := $(O)/librdmamig.a
LIB_SO   := $(O)/librdmamig.so
VMM_A    := $(O)/librmvmm.a
BIN      := $(O)/rdmamig

# Filled by the Build.mk files.
LIB_OBJS   :=
VMM_OBJS   :=
CLI_OBJS   :=
HOST_TESTS :=
BED_TESTS  :=
BENCH_BINS :=

include include/Build.mk
include common/Build.mk
include transport/Build.mk
include migration/Build.mk
include pinning/Build.mk
include kvm/Build.mk
include cli/Build.mk
include tests/Build.mk
include bench/Build.mk
include fuzz/Build.mk

all: $(LIB_A) $(LIB_SO) $(VMM_A) $(BIN)

$(O)/%.o: %.c
	$(quiet) CC $@
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) $(CFLAGS_$(notdir $*)) -c -o $@ $<

$(O)/%.o: %.S
	$(quiet) AS $@
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) -c -o $@ $<

$(LIB_A): $(addprefix $(O)/,$(LIB_OBJS))
	$(quiet) AR $@
	$(Q)rm -f $@ && ar rcs $@ $^

# --no-undefined: every symbol the library uses must come from its own
# objects or the libraries named here, so an engine call into kvm/ (which is
# not in LIB_OBJS) fails this link instead of waiting for the embedder.
$(LIB_SO): $(addprefix $(O)/,$(LIB_OBJS)) include/librdmamig.map
	$(quiet) LINK $@
	$(Q)$(CC) -shared -o $@ $(addprefix $(O)/,$(LIB_OBJS)) -Wl,--no-undefined \
		-Wl,--version-script=include/librdmamig.map -Wl,-soname,librdmamig.so.0 $(LDFLAGS) $(LIBS)
	$(Q)ln -sf librdmamig.so $@.0

$(VMM_A): $(addprefix $(O)/,$(VMM_OBJS))
	$(quiet) AR $@
	$(Q)rm -f $@ && ar rcs $@ $^

$(BIN): $(addprefix $(O)/,$(CLI_OBJS)) $(VMM_A) $(LIB_A)
	$(quiet) LINK $@
	$(Q)$(CC) -o $@ $^ $(LDFLAGS) $(LIBS)

# Test and bench binaries link the static libraries, so they can reach
# internal (non-exported) functions of each layer.
$(O)/tests/%: $(O)/tests/%.o $(VMM_A) $(LIB_A)
	$(quiet) LINK $@
	$(Q)$(CC) -o $@ $^ $(LDFLAGS) -lcriterion $(LIBS)

$(O)/bench/%: $(O)/bench/%.o $(VMM_A) $(LIB_A)
	$(quiet) LINK $@
	$(Q)$(CC) -o $@ $^ $(LDFLAGS) $(LIBS) -lm

tests: $(addprefix $(O)/tests/,$(HOST_TESTS) $(BED_TESTS))
benches: $(addprefix $(O)/bench/,$(BENCH_BINS))

deps:
	$(Q)scripts/deps.sh

test: deps
	$(Q)$(MAKE) --no-print-directory all tests fuzz-bins
	$(Q)O=$(O) HOST_TESTS="$(HOST_TESTS)" BED_TESTS="$(BED_TESTS)" tests/run.sh

# The host suites under AddressSanitizer + UBSan (the bed suites run in
# `make test`).  Any report fails the run.
check-asan: deps
	$(Q)$(MAKE) --no-print-directory SANITIZE=1 all tests fuzz-bins
	$(Q)ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp \
		O=build-asan HOST_TESTS="$(HOST_TESTS)" BED_TESTS= tests/run.sh

# The host suites under valgrind memcheck: invalid accesses, uninitialised
# values and definite leaks fail the run.
check-valgrind: deps all tests fuzz-bins
	$(Q)WRAP="valgrind -q --trace-children=yes --error-exitcode=99 --leak-check=full \
		--errors-for-leak-kinds=definite" O=$(O) HOST_TESTS="$(HOST_TESTS)" BED_TESTS= tests/run.sh

demo: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)O=$(O) scripts/demo.sh

install: all
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/bin
	install -m 644 $(LIB_A) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(LIB_SO) $(DESTDIR)$(PREFIX)/lib/librdmamig.so.0
	ln -sf librdmamig.so.0 $(DESTDIR)$(PREFIX)/lib/librdmamig.so
	install -m 644 include/rdmamig.h $(DESTDIR)$(PREFIX)/include/
	install -m 755 $(BIN) $(DESTDIR)$(PREFIX)/bin/

clean:
	$(quiet) CLEAN build
	$(Q)rm -rf build build-asan build-fuzz $(O)

.PHONY: all tests benches deps test check-asan check-valgrind demo install clean fuzz fuzz-bins fuzz-replay fuzz-merge
.DELETE_ON_ERROR:

# Name every test and bench object as a prerequisite, so none is an
# intermediate file: make neither deletes them nor skips building a new one.
$(foreach t,$(HOST_TESTS) $(BED_TESTS),$(eval $(O)/tests/$(t): $(O)/tests/$(t).o))
$(foreach b,$(BENCH_BINS),$(eval $(O)/bench/$(b): $(O)/bench/$(b).o))

-include $(shell find $(O) -name '*.d' 2>/dev/null)
