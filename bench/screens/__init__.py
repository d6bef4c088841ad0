"""Screens: one arm of a candidate change replayed against stored curves (BENCHMARKS.md says which and why)."""
