"""Throughput benchmarks: the error kernel (`python -m benchmarks.kernel`) and the train step (`benchmarks.train`)."""
