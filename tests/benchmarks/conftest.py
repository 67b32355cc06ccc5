"""Benchmarks run only under `tox -e bench` (SPARSEBENCH_BENCH=1): they time things, and the
default test run must stay fast and free of timing."""
