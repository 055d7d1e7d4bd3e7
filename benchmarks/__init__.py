"""Benchmarks: the peer-comparison suite (``python -m benchmarks.run``) and the BENCHMARKS.md assembler."""
