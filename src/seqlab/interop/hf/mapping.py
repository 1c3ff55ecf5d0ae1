"""Weight tables: how the tensors of a Hugging Face checkpoint become a seqlab model's, and back.

A table is data: a list of :class:`Rule` rows, one per tensor family, e.g. GPT-2's fused
attention projection::

    Rule("transformer.h.{i}.attn.c_attn.weight",
         ("blocks.{i}.attention.q_proj.weight", "blocks.{i}.attention.k_proj.weight",
          "blocks.{i}.attention.v_proj.weight"), transpose=True)

``{i}`` runs over the layers. Importing, the HF tensor is transposed when ``transpose`` is set
(GPT-2's ``Conv1D`` stores ``(in, out)`` where ``nn.Linear`` stores ``(out, in)``) and, when
the row names several seqlab tensors, split along dim 0 into their sizes. Exporting does the
inverse: concatenate, then transpose. A row applies when the seqlab model has its tensors, so
one table covers a family's variants (a tied or untied head, a plain or gated feed-forward,
with or without biases).

:func:`to_seqlab` checks, before anything is loaded, that every tensor the model needs is in
the checkpoint with the shape its config implies, and that the checkpoint holds nothing the
table does not account for; each failure is a :class:`CheckpointError` naming the tensor.

The seqlab side is named by the model's distinct tensors: ``named_parameters`` (a shared
tensor, such as a tied head or T5's relative bias used by every layer, under its first name)
and its persistent buffers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seqlab.errors import CheckpointError


@dataclass(frozen=True)
class Rule:
    """One row of a weight table.

    Attributes:
        hf: the HF tensor's name, ``{i}`` standing for a layer index.
        seqlab: the seqlab tensor's name, or several, which the HF tensor holds stacked along
            dim 0 (after the transpose).
        transpose: the HF tensor is the transpose of seqlab's (``Conv1D`` weights).
        when, unless: apply the row only when the model has (``when``) or lacks (``unless``)
            this tensor: T5's plain ``wi`` and gated ``wi_1`` are both seqlab's ``up``, told
            apart by the gated network's ``gate``.
    """

    hf: str
    seqlab: str | tuple[str, ...]
    transpose: bool = False
    when: str = ""
    unless: str = ""

    def applies(self, tensors: dict[str, Tensor]) -> bool:
        """Whether the model has this row's tensors (and its ``when``, and not its ``unless``)."""
        return (all(target in tensors for target in self.targets) and (not self.when or self.when in tensors)
                and not (self.unless and self.unless in tensors))

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.seqlab,) if isinstance(self.seqlab, str) else self.seqlab

    def expanded(self, n_layers: int) -> Iterable[Rule]:
        """This row for every layer index (or as it is, without ``{i}``)."""
        if "{i}" not in self.hf:
            yield self
            return
        for index in range(n_layers):
            def at(name: str) -> str:
                return name.replace("{i}", str(index))

            yield Rule(at(self.hf), tuple(map(at, self.targets)), self.transpose, at(self.when), at(self.unless))


def model_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The model's distinct tensors by name: parameters (shared ones once, under their first
    name) and persistent buffers."""
    tensors = dict(model.named_parameters())
    transient = {f"{prefix}.{name}" if prefix else name
                 for prefix, module in model.named_modules() for name in module._non_persistent_buffers_set}
    tensors.update((name, buffer) for name, buffer in model.named_buffers() if name not in transient)
    return tensors


def active_rules(table: Sequence[Rule], tensors: dict[str, Tensor], n_layers: int) -> list[Rule]:
    """The expanded rows whose seqlab tensors the model has; every model tensor must be covered
    by exactly one (a gap is a bug in the table, not in the user's checkpoint)."""
    rules = [rule for row in table for rule in row.expanded(n_layers) if rule.applies(tensors)]
    covered = [target for rule in rules for target in rule.targets]
    missing = sorted(set(tensors) - set(covered))
    if missing or len(covered) != len(set(covered)):
        raise AssertionError(f"weight table does not cover each tensor once: uncovered {missing[:5]}")
    return rules


def to_seqlab(table: Sequence[Rule], hf_tensors: dict[str, Tensor], model: nn.Module, n_layers: int,
              ignored: Sequence[str] = (), where: str = "the checkpoint") -> dict[str, Tensor]:
    """The model's tensors from an HF checkpoint's, checked (see the module docstring).

    Args:
        hf_tensors: the checkpoint's tensors by HF name.
        ignored: regular expressions of HF names that carry nothing (attention-mask buffers,
            copies of tied weights); they may be present or not.
    Raises:
        CheckpointError: a needed tensor is missing or has the wrong shape, or the checkpoint
            has a tensor the table does not account for.
    """
    tensors = model_tensors(model)
    state: dict[str, Tensor] = {}
    used = set()
    for rule in active_rules(table, tensors, n_layers):
        if rule.hf not in hf_tensors:
            raise CheckpointError(f"{where} has no tensor {rule.hf!r}, which its config.json implies; "
                                  "the weights are incomplete or belong to another config")
        value = hf_tensors[rule.hf]
        used.add(rule.hf)
        if rule.transpose and value.dim() == 2:
            value = value.T
        shapes = [tuple(tensors[target].shape) for target in rule.targets]
        expected = (sum(shape[0] for shape in shapes), *shapes[0][1:]) if shapes[0] else ()
        if tuple(value.shape) != expected:
            shown = tuple(hf_tensors[rule.hf].shape)
            wanted = expected[::-1] if rule.transpose and len(expected) == 2 else expected
            raise CheckpointError(f"{where}: tensor {rule.hf!r} has shape {shown}, but config.json implies "
                                  f"{wanted}; the weights do not match the config")
        parts = value.split([shape[0] for shape in shapes], dim=0) if len(shapes) > 1 else (value,)
        state.update(zip(rule.targets, parts))
    patterns = [re.compile(pattern) for pattern in ignored]
    extra = sorted(name for name in hf_tensors if name not in used and not any(p.fullmatch(name) for p in patterns))
    if extra:
        raise CheckpointError(f"{where} holds tensors that its config.json does not account for "
                              f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}); "
                              "the config and the weights do not belong together")
    return state


def to_hf(table: Sequence[Rule], model: nn.Module, n_layers: int) -> dict[str, Tensor]:
    """The model's tensors under their HF names (contiguous, detached, in the model's dtypes)."""
    tensors = model_tensors(model)
    out = {}
    for rule in active_rules(table, tensors, n_layers):
        parts = [tensors[target].detach() for target in rule.targets]
        value = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        out[rule.hf] = (value.T if rule.transpose and value.dim() == 2 else value).contiguous()
    return out


def load_into(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy ``state`` (distinct tensors, as :func:`to_seqlab` returns) into ``model``'s tensors,
    casting to each tensor's dtype; tied aliases follow their first name."""
    tensors = model_tensors(model)
    with torch.no_grad():
        for name, value in state.items():
            tensors[name].copy_(value)
