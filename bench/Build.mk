# bench/ — benchmark harness, model and plots.  Prints figures and ratios;
# never part of `make test`.
# bench/model: the pre-copy model; it asks migration/policy.c what to do.
BENCH_BINS += model
