"""Simulated pieces for the demo and the tests: local backends (and, later, a cluster)."""
