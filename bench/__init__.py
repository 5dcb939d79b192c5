"""Benchmarks: each contender side by side with its baseline in the same run (see README.md).
Run as modules from the repository root (`.venv/bin/python -m bench.engine`); they use the
tests' helpers as the package `tests.support`."""
