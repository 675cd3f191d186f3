"""Kernel templates, one file per op family (see ops/kernel.py)."""
