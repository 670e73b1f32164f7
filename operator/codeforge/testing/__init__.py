"""Helpers for tests and benchmarks (as `kopf.testing` is for Kopf): private redis-server processes.

Nothing in the operator or the agent imports this (an import-linter contract says so).
"""
