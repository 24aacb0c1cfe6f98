"""Benchmarks: each prints our figure beside its peer measured in the same run (`python -m bench`)."""
