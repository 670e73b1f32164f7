"""Benchmarks behind `codeforge bench`; results are printed as tables and written as JSON."""
