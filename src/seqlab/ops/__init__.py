"""Algorithms several families share, each fast path with a reference beside it."""
