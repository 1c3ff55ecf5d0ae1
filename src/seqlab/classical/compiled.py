"""Loops compiled to machine code, for the algorithms numpy cannot express without a pass over
whole arrays per step (a hash-table probe whose next slot depends on the last, a merge whose next
element depends on which run gave the last one).

``compiled`` is ``numba.njit``: the function is compiled on first call for the argument types it
gets and its machine code cached on disk (a few seconds the first time in a fresh environment,
a fraction of a second after). Every compiled loop has a plain reference beside it that its
tests compare with.
"""

from __future__ import annotations

import numba


def compiled(function=None, **options):
    """``numba.njit(nogil=True, **options)``, its machine code cached on disk where numba finds a
    writable place and compiled anew in each process where it does not (numba refuses to cache,
    when no place is writable, rather than compile without a cache)."""
    def decorate(function):
        try:
            return numba.njit(cache=True, nogil=True, **options)(function)
        except RuntimeError:                     # "cannot cache function ...: no locator available"
            return numba.njit(nogil=True, **options)(function)
    return decorate(function) if function is not None else decorate
