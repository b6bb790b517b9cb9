"""`python -m dart.bench`: decode speed of dense, masked and compacted FFN execution (see dart.bench.decode)."""
