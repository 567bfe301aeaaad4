"""Compiled kernels (built from csrc/ by setup.py)."""
