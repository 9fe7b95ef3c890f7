"""Benchmarks: run as scripts, never collected by pytest."""
