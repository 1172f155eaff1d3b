# bench/ — benchmark harness, model and plots.  Prints figures and ratios;
# never part of `make test`.  Benches link librmvmm.a and librdmamig.a and may
# include any layer's headers, never cli/'s; no layer includes bench/.
# bench/model: the pre-copy model; it asks migration/policy.c what to do.
BENCH_BINS += model
# bench/bench-engine: the engine's iterate pass alone, over a memory-only VMM
# and a null transport: guest GiB scanned and ranges made per second.
BENCH_BINS += bench-engine

# `make bench`: the migration benchmark (bench/run; on a host without RDMA it
# boots the soft-RoCE test VM).  An explicit rule would become make's default
# goal: keep whatever goal the Makefile had.
bench_saved_goal := $(.DEFAULT_GOAL)
bench: all benches
	$(Q)O=$(O) bench/run
.PHONY: bench
.DEFAULT_GOAL := $(bench_saved_goal)
