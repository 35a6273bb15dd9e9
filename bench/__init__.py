"""Benchmarks (run with bench/run and bench/pipeline; not part of the test suite)."""
