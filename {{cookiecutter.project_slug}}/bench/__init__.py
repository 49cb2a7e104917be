"""Benchmarks: numbers about the running stack, kept out of the tests."""
