"""The training progress bar: steps, or seconds when a time budget will end the run first."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm


class StepBar:
    """A tqdm bar over steps or, when the budget will end the run first, over its seconds;
    shows the training loss and tokens per second."""

    def __init__(self, config: Any, step: int, end: int, seconds: float, desc: str, enabled: bool):
        budget = config.budget_seconds
        self.by_time = budget is not None and end - step > 10 * budget   # more steps than can fit
        self.total = budget if self.by_time else end
        self.bar = tqdm(
            total=self.total, initial=min(seconds, budget) if self.by_time else step,
            unit="s" if self.by_time else "step",
            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}{postfix}]" if self.by_time else None,
            desc=desc, disable=not (config.progress and enabled), mininterval=0.5, dynamic_ncols=True,
        )

    def advance(self, step: int, seconds: float, loss: float, tokens_per_second: float) -> None:
        position = min(seconds, self.total) if self.by_time else step
        self.bar.update(position - self.bar.n)
        if step % 10 == 0 or (not self.by_time and step == self.total):
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_second:,.0f}", refresh=False)

    def __enter__(self) -> StepBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()

