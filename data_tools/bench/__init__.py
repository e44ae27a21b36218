"""Measurement scripts: speed, memory and fidelity benchmarks (run as scripts)."""
