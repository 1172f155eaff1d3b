# bench/ — benchmark harness, model and plots.  Prints figures and ratios;
# never part of `make test`.
