"""Test-only stand-in for cuda-python: see ``cuda/bindings/runtime.py``."""
