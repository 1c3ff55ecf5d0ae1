"""A wall-clock budget: everything one model does (loading data, training tokenizers, fitting,
training, evaluating, saving) counts against one clock.

``seqlab train --budget`` and ``seqlab compare --budget`` start the clock before the data is
read; the Trainer stops taking steps when the time left is less than what its closing work
(one more evaluation and checkpoint, measured on the previous ones, and whatever the caller
reserves for its own closing work) is expected to take; a model that fits itself gets the
instant to stop as a ``deadline``.
"""

from __future__ import annotations

import math
import time
from typing import Callable


class Budget:
    """``seconds`` of wall time from now, of which ``spent`` were already used (a resumed run).

    ``Budget(None)`` is unlimited. ``clock`` reads the time (tests pass a fake one).
    """

    def __init__(self, seconds: float | None, spent: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self.clock = clock
        self.started = clock() - spent

    def elapsed(self) -> float:
        return self.clock() - self.started

    def remaining(self) -> float:
        return math.inf if self.seconds is None else self.seconds - self.elapsed()

    @property
    def deadline(self) -> float | None:
        """The ``time.monotonic()`` instant the budget ends (None: never)."""
        return None if self.seconds is None else self.started + self.seconds

    def fraction(self) -> float:
        """How much of the budget is gone, in [0, 1] (0 when unlimited)."""
        return 0.0 if self.seconds is None else min(1.0, self.elapsed() / self.seconds)
