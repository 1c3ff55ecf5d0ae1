"""Synthetic tasks that isolate one ability: remembering across long gaps.

- The adding problem (Hochreiter and Schmidhuber 1997, experiment 4; in the form of Le et al.
  2015): inputs (B, T, 2) hold a random value u_t ~ U(0, 1) and a marker m_t, with exactly one
  marker in each half of the sequence; the target is the sum of the two marked values. Always
  answering 1 (the mean) scores MSE = Var(u1 + u2) = 2/12 = 0.167, so a model below that has
  carried information from the markers to the end.
- The copy-memory task (Hochreiter and Schmidhuber 1997; Arjovsky et al. 2016): ten symbols
  from {1..8}, then ``gap`` blanks (0) with a delimiter (9) at the last of them, then ten more
  blanks; the target is blanks everywhere except the last ten positions, which repeat the ten
  symbols. Predicting blanks and then uniformly random symbols scores the baseline
  cross-entropy 10 ln 8 / (gap + 20).

Three more isolate what a model can recall by content rather than by position. Each is read by
a causal language model, (B, T) ids to (B, T, V) logits; its answers sit at the last positions
of the sequence, and the loss is the cross-entropy on those positions alone (every other
position is input only), their accuracy the metric:

- Selective copying (Gu and Dao 2023, "Mamba", section 4.1.1 and Figure 2): ``n_memorize``
  data tokens at random positions among blanks, then as many markers, at which the data
  tokens are to be written in order. The spacing depends on the content, so a time-invariant
  model (a fixed convolution, S4D) cannot tell where the tokens were from the position alone.
- Induction heads (Olsson et al. 2022; Gu and Dao 2023, section 4.1.2): random tokens, one
  trigger followed by a target token, and the trigger again at the end, where the target is
  the answer; evaluated at lengths other than the training one.
- Multi-query associative recall (Arora et al. 2023, "Zoology", section 3): ``n_pairs``
  key-value pairs, then keys seen earlier, each to be answered by its value.

Each task draws training batches from a generator and holds fixed validation and test sets.
"""

from __future__ import annotations

import abc
import math
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seqlab.contracts import device_of
from seqlab.errors import ConfigError


@torch.no_grad()
def predict_in_batches(model: nn.Module, inputs: Tensor, batch_size: int, last: int | None = None) -> Tensor:
    """``model(inputs)`` in eval mode, ``batch_size`` rows at a time, as fp32 on the CPU; the
    model's mode is restored afterwards. With ``last``, only the outputs at the last ``last``
    positions are kept: (n, last, ...)."""
    device = device_of(model)
    was_training = model.training
    model.eval()
    kept = slice(None) if last is None else slice(-last, None)
    outputs = torch.cat([model(part.to(device))[:, kept].float().cpu() for part in inputs.split(batch_size)])
    model.train(was_training)
    return outputs


def answer_loss(model: nn.Module, inputs: Tensor, answers: Tensor) -> Tensor:
    """Cross-entropy on the answer positions only: the last K of the sequence.

    Args:
        model: a causal language model, (B, T) ids -> (B, T, V) logits.
        inputs: (B, T) ids.
        answers: (B, K) the ids due at positions T-K .. T-1.
    """
    logits = model(inputs)[:, -answers.shape[1]:]                                 # (B, K, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), answers.flatten())


def answer_metrics(model: nn.Module, inputs: Tensor, answers: Tensor, batch_size: int) -> dict[str, float]:
    """``loss``, the cross-entropy on the answer positions (the last K), and ``accuracy``, the
    fraction of them whose most likely id is the answer; ``answers`` is (n, K)."""
    logits = predict_in_batches(model, inputs, batch_size, last=answers.shape[1])   # (n, K, V)
    return {"loss": F.cross_entropy(logits.flatten(0, 1), answers.flatten()).item(),
            "accuracy": (logits.argmax(-1) == answers).sum().item() / answers.numel()}


def draw_eval_sets(sample: Callable[[int, torch.Generator], Any], eval_size: int, seed: int) -> dict[str, Any]:
    """The fixed "valid" and "test" sets of ``eval_size`` from ``sample``, each drawn from its
    own generator seeded by ``seed``."""
    return {split: sample(eval_size, torch.Generator().manual_seed(seed + i + 1))
            for i, split in enumerate(("valid", "test"))}


def evaluation_rows(size: int, batch_size: int, max_batches: int | None) -> slice:
    """The rows of a fixed evaluation set that ``max_batches`` batches of ``batch_size`` cover."""
    return slice(None) if max_batches is None else slice(0, min(size, max_batches * batch_size))


class AddingProblem:
    """Regress the sum of two marked values in a sequence of ``length``."""

    name = "adding"
    baseline_mse = 1.0 / 6.0

    def __init__(self, length: int, eval_size: int = 1000, seed: int = 0):
        if length < 2:
            raise ConfigError(f"the adding problem needs length >= 2, got {length}")
        self.length = length
        self.eval_sets = draw_eval_sets(self.sample, eval_size, seed)

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(n, T, 2) inputs and (n,) targets."""
        half = self.length // 2
        values = torch.rand(n, self.length, generator=generator)
        first = torch.randint(0, half, (n,), generator=generator)
        second = torch.randint(half, self.length, (n,), generator=generator)
        markers = torch.zeros(n, self.length)
        rows = torch.arange(n)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        return torch.stack([values, markers], dim=-1), (values * markers).sum(dim=1)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return self.sample(batch_size, generator)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        inputs, targets = batch
        return F.mse_loss(model(inputs).squeeze(-1).float(), targets)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "valid", batch_size: int = 500,
                 max_batches: int | None = None) -> dict[str, float]:
        """Mean squared error on the fixed ``split`` set (``loss`` and ``mse`` alike)."""
        inputs, targets = self.eval_sets["valid" if split == "valid" else "test"]
        predictions = predict_in_batches(model, inputs, batch_size).squeeze(-1)
        mse = F.mse_loss(predictions, targets).item()
        return {"loss": mse, "mse": mse}

    def spec(self) -> dict[str, Any]:
        return {"task": self.name, "length": self.length}


class CopyMemory:
    """Reproduce ten symbols after a gap of ``gap`` blanks."""

    name = "copy"
    n_symbols, n_copied = 10, 10                 # ids: 0 blank, 1..8 symbols, 9 delimiter

    def __init__(self, gap: int, eval_size: int = 500, seed: int = 0):
        if gap < 1:
            raise ConfigError(f"the copy task needs gap >= 1, got {gap}")
        self.gap = gap
        self.baseline_loss = self.n_copied * math.log(8) / (gap + 2 * self.n_copied)
        self.eval_sets = draw_eval_sets(self.sample, eval_size, seed)

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(n, gap + 20) input ids and target ids."""
        copied = torch.randint(1, 9, (n, self.n_copied), generator=generator)
        inputs = torch.zeros(n, self.gap + 2 * self.n_copied, dtype=torch.long)
        inputs[:, : self.n_copied] = copied
        inputs[:, self.n_copied + self.gap - 1] = 9
        targets = torch.zeros_like(inputs)
        targets[:, -self.n_copied:] = copied
        return inputs, targets

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return self.sample(batch_size, generator)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        inputs, targets = batch
        return F.cross_entropy(model(inputs).flatten(0, 1).float(), targets.flatten())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "valid", batch_size: int = 250,
                 max_batches: int | None = None) -> dict[str, float]:
        """Cross-entropy per position, and the accuracy on the ten copied symbols."""
        inputs, targets = self.eval_sets["valid" if split == "valid" else "test"]
        logits = predict_in_batches(model, inputs, batch_size)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten()).item()
        copied = logits[:, -self.n_copied:].argmax(-1) == targets[:, -self.n_copied:]
        return {"loss": loss, "copy_accuracy": copied.float().mean().item()}

    def spec(self) -> dict[str, Any]:
        return {"task": self.name, "gap": self.gap}


class AnsweredAtTheEnd(abc.ABC):
    """The shared half of the tasks read by a causal LM and answered at the last K positions:
    training batches from ``sample``, the loss on the answers alone, and fixed evaluation sets.
    A subclass defines ``sample(n, generator) -> (inputs (n, T), answers (n, K))`` and fills
    ``eval_sets`` with the "valid" and "test" sets."""

    eval_sets: dict[str, tuple[Tensor, Tensor]]

    @abc.abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(n, T) input ids and (n, K) the answers due at their last K positions."""

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return self.sample(batch_size, generator)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        return answer_loss(model, *batch)

    def eval_set(self, split: str) -> tuple[Tensor, Tensor]:
        return self.eval_sets["valid" if split == "valid" else "test"]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "valid", batch_size: int = 250,
                 max_batches: int | None = None) -> dict[str, float]:
        """Cross-entropy on the answer positions, and the fraction of answers right, on the fixed
        ``split`` set (its first ``max_batches`` batches if given)."""
        return self.score(model, self.eval_set(split), batch_size, max_batches)

    @staticmethod
    def score(model: nn.Module, eval_set: tuple[Tensor, Tensor], batch_size: int,
              max_batches: int | None) -> dict[str, float]:
        inputs, answers = eval_set
        rows = evaluation_rows(len(inputs), batch_size, max_batches)
        return answer_metrics(model, inputs[rows], answers[rows], batch_size)


class SelectiveCopying(AnsweredAtTheEnd):
    """Write out, in order, the data tokens scattered among blanks (Gu and Dao 2023, section
    4.1.1 and Figure 2; their Table 1 trains at length 4,096 with 16 tokens to memorise).

    Ids: 0 blank, 1 .. ``n_symbols`` data tokens, ``n_symbols + 1`` the marker. A sequence has
    ``length + n_memorize`` positions::

        positions 0 .. length-1                   n_memorize data tokens (uniform, with
                                                  repeats) at random distinct positions,
                                                  blanks elsewhere
        positions length .. length+n_memorize-1   markers; the k-th answer is the data token
                                                  that came k-th (k = 0 ..)

    Unlike the copy-memory task, where the symbols always stand at the same positions, where the
    data tokens stand depends on the sequence: a model must choose by content what to keep and
    what to skip. Answering uniformly among the data tokens is the chance baseline: accuracy
    1 / n_symbols, cross-entropy ln n_symbols.
    """

    name = "selective-copying"

    def __init__(self, length: int, n_memorize: int, n_symbols: int = 8, eval_size: int = 500, seed: int = 0):
        if n_memorize < 1:
            raise ConfigError(f"selective copying needs n_memorize >= 1, got {n_memorize}")
        if length < n_memorize:
            raise ConfigError(f"selective copying needs length >= n_memorize ({n_memorize}) to hold the data "
                              f"tokens, got {length}")
        if n_symbols < 2:
            raise ConfigError(f"selective copying needs n_symbols >= 2, got {n_symbols}")
        self.length, self.n_memorize, self.n_symbols = length, n_memorize, n_symbols
        self.marker = n_symbols + 1
        self.vocab_size = n_symbols + 2
        self.chance_accuracy = 1.0 / n_symbols
        self.baseline_loss = math.log(n_symbols)
        self.eval_sets = draw_eval_sets(self.sample, eval_size, seed)

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(n, length + n_memorize) input ids and (n, n_memorize) answers."""
        data = torch.randint(1, self.n_symbols + 1, (n, self.n_memorize), generator=generator)
        # n_memorize distinct positions per row, in increasing order: the order they are written in.
        where = torch.rand(n, self.length, generator=generator).argsort(dim=1)[:, : self.n_memorize].sort(dim=1).values
        inputs = torch.zeros(n, self.length + self.n_memorize, dtype=torch.long)
        inputs.scatter_(1, where, data)
        inputs[:, self.length:] = self.marker
        return inputs, data

    def spec(self) -> dict[str, Any]:
        return {"task": self.name, "length": self.length, "n_memorize": self.n_memorize, "n_symbols": self.n_symbols}


class InductionHeads(AnsweredAtTheEnd):
    """Recall the token that followed a trigger, when the trigger comes again (Olsson et al.
    2022; Gu and Dao 2023, section 4.1.2 and Table 11, trained at 256 and tested up to 2^20).

    Ids: 0 .. ``n_symbols - 1`` ordinary tokens, ``n_symbols`` the trigger. A sequence of
    ``length`` positions::

        uniform ordinary tokens, except
        position p (uniform in 0 .. length-3)     the trigger; position p+1 holds the target
        position length-1                         the trigger again; the answer is the target

    The trigger occurs nowhere else, so a model that found it and kept the token after it
    answers right at any length; ``evaluate(..., length=L)`` scores fixed sets at other lengths
    (drawn, like the training length's, from generators seeded by ``seed``, the split and L).
    Guessing is the chance baseline: accuracy 1 / n_symbols, cross-entropy ln n_symbols.
    """

    name = "induction-heads"

    def __init__(self, length: int, n_symbols: int = 16, min_length: int | None = None, eval_size: int = 500,
                 seed: int = 0):
        if length < 3:
            raise ConfigError(f"induction heads need length >= 3 (trigger, target, trigger), got {length}")
        if n_symbols < 2:
            raise ConfigError(f"induction heads need n_symbols >= 2, got {n_symbols}")
        if min_length is not None and not 3 <= min_length <= length:
            raise ConfigError(f"induction heads need 3 <= min_length <= length ({length}), got {min_length}")
        self.length, self.n_symbols, self.eval_size, self.seed = length, n_symbols, eval_size, seed
        self.min_length = length if min_length is None else min_length
        self.trigger = n_symbols
        self.vocab_size = n_symbols + 1
        self.chance_accuracy = 1.0 / n_symbols
        self.baseline_loss = math.log(n_symbols)
        self.eval_sets_by_length: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}
        for split in ("valid", "test"):
            self.eval_set(split, length)

    def sample(self, n: int, generator: torch.Generator, length: int | None = None) -> tuple[Tensor, Tensor]:
        """(n, length) input ids (the training length by default) and (n, 1) answers."""
        length = self.length if length is None else length
        inputs = torch.randint(0, self.n_symbols, (n, length), generator=generator)
        where = torch.randint(0, length - 2, (n,), generator=generator)
        rows = torch.arange(n)
        inputs[rows, where] = self.trigger
        inputs[:, -1] = self.trigger
        return inputs, inputs[rows, where + 1][:, None]

    def eval_set(self, split: str, length: int | None = None) -> tuple[Tensor, Tensor]:
        """The fixed ``split`` set at ``length`` (the training length by default; drawn on first
        use)."""
        length = self.length if length is None else length
        if length < 3:
            raise ConfigError(f"induction heads need length >= 3 (trigger, target, trigger), got {length}")
        split = "valid" if split == "valid" else "test"
        if (split, length) not in self.eval_sets_by_length:
            index = ("valid", "test").index(split)
            generator = torch.Generator().manual_seed(self.seed + 1 + index + 2 * length)
            self.eval_sets_by_length[split, length] = self.sample(self.eval_size, generator, length)
        return self.eval_sets_by_length[split, length]

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A batch at one length, log-uniform in min_length .. length (each octave as likely)."""
        span = math.log(self.length + 1) - math.log(self.min_length)
        length = int(math.exp(math.log(self.min_length) + span * torch.rand((), generator=generator).item()))
        return self.sample(batch_size, generator, length)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "valid", batch_size: int = 100,
                 max_batches: int | None = None, length: int | None = None) -> dict[str, float]:
        """As for every such task, on the fixed ``split`` set at ``length`` (the training length
        by default)."""
        return self.score(model, self.eval_set(split, length), batch_size, max_batches)

    def spec(self) -> dict[str, Any]:
        return {"task": self.name, "length": self.length, "n_symbols": self.n_symbols}


class AssociativeRecall(AnsweredAtTheEnd):
    """Multi-query associative recall (Arora et al. 2023, "Zoology", section 3 and Figure 2):
    answer each queried key by the value it was paired with.

    Ids: 0 .. ``n_keys - 1`` keys, ``n_keys`` .. ``n_keys + n_values - 1`` values (disjoint
    ranges). A sequence of ``2 n_pairs + n_queries`` positions::

        k_1 v_1 k_2 v_2 ... k_P v_P          P = n_pairs distinct keys (uniform), each with a
                                             uniform value (values may repeat)
        q_1 ... q_Q                          Q = n_queries distinct keys of those P, in random
                                             order; the answer at q_j is its value

    The number of pairs is the difficulty: a model must keep P associations at once, which a
    state of fixed size holds only up to its capacity (Zoology's argument for why gated
    convolutions need width growing with P, and attention does not). Guessing among the values
    is the chance baseline: accuracy 1 / n_values, cross-entropy ln n_values.
    """

    name = "associative-recall"

    def __init__(self, n_pairs: int, n_queries: int | None = None, n_keys: int = 64, n_values: int = 64,
                 eval_size: int = 500, seed: int = 0):
        n_queries = n_pairs if n_queries is None else n_queries
        if n_pairs < 1:
            raise ConfigError(f"associative recall needs n_pairs >= 1, got {n_pairs}")
        if n_keys < n_pairs:
            raise ConfigError(f"associative recall needs n_keys >= n_pairs ({n_pairs}) for distinct keys, got {n_keys}")
        if not 1 <= n_queries <= n_pairs:
            raise ConfigError(f"associative recall needs 1 <= n_queries <= n_pairs ({n_pairs}), got {n_queries}")
        if n_values < 2:
            raise ConfigError(f"associative recall needs n_values >= 2, got {n_values}")
        self.n_pairs, self.n_queries, self.n_keys, self.n_values = n_pairs, n_queries, n_keys, n_values
        self.length = 2 * n_pairs + n_queries
        self.vocab_size = n_keys + n_values
        self.chance_accuracy = 1.0 / n_values
        self.baseline_loss = math.log(n_values)
        self.eval_sets = draw_eval_sets(self.sample, eval_size, seed)

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(n, 2 n_pairs + n_queries) input ids and (n, n_queries) answers."""
        pairs = self.n_pairs
        keys = torch.rand(n, self.n_keys, generator=generator).argsort(dim=1)[:, :pairs]          # (n, P)
        values = self.n_keys + torch.randint(0, self.n_values, (n, pairs), generator=generator)   # (n, P)
        asked = torch.rand(n, pairs, generator=generator).argsort(dim=1)[:, : self.n_queries]      # (n, Q)
        inputs = torch.empty(n, self.length, dtype=torch.long)
        inputs[:, 0: 2 * pairs: 2] = keys
        inputs[:, 1: 2 * pairs: 2] = values
        inputs[:, 2 * pairs:] = keys.gather(1, asked)
        return inputs, values.gather(1, asked)

    def spec(self) -> dict[str, Any]:
        return {"task": self.name, "n_pairs": self.n_pairs, "n_queries": self.n_queries, "n_keys": self.n_keys,
                "n_values": self.n_values}
