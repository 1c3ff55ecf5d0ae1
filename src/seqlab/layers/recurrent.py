"""Recurrent layers: Elman, Jordan, LSTM and GRU, deep and bidirectional, over padded batches.

One time step of each cell, for input x_t and the previous state (sigma is the logistic
function, * the elementwise product):

- Elman (1990):   h_t = phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),  phi = tanh or ReLU.
- Jordan (1986):  h_t = tanh(W_ih x_t + b_ih + W_hh y_{t-1} + b_hh),  y_t = tanh(W_hy h_t + b_y):
  the previous *output* y, not the hidden state, is fed back.
- LSTM (Hochreiter and Schmidhuber 1997; forget gate of Gers et al. 2000):
      i, f, g, o = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh   (split in four, torch's order)
      c_t = sigma(f) * c_{t-1} + sigma(i) * tanh(g),   h_t = sigma(o) * tanh(c_t),
  with optional peepholes (Gers and Schmidhuber 2000): i += p_i * c_{t-1}, f += p_f * c_{t-1},
  o += p_o * c_t.
- GRU (Cho et al. 2014), torch's form:
      r = sigma(W_ir x + b_ir + W_hr h + b_hr),  z = sigma(W_iz x + b_iz + W_hz h + b_hz),
      n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h_t = (1 - z) * n + z * h_{t-1}.

The ``*_step`` functions are the specification and use torch's weight layout, so weights copy
straight from ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``. :class:`Recurrent` runs a stack of them:
on torch's fused modules where their semantics match (Elman, LSTM without peepholes, GRU),
and on our cells, unrolled in Python, where none exists (Jordan, peepholes).

Shapes: B batch, T time, D input features, H hidden units, L layers, S = L x directions.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqlab.errors import ConfigError, DataError

CellKind = Literal["elman", "jordan", "lstm", "gru"]
CELL_KINDS = ("elman", "jordan", "lstm", "gru")
GATES = {"elman": 1, "jordan": 1, "lstm": 4, "gru": 3}
State = Tensor | tuple[Tensor, Tensor]


def elman_step(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor,
               nonlinearity: str = "tanh") -> Tensor:
    """One Elman step: x (B, D), h (B, H) -> h (B, H)."""
    pre = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def jordan_step(x: Tensor, y: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor,
                w_hy: Tensor, b_y: Tensor) -> Tensor:
    """One Jordan step: x (B, D), previous output y (B, H) -> output y (B, H)."""
    h = torch.tanh(x @ w_ih.T + b_ih + y @ w_hh.T + b_hh)
    return torch.tanh(h @ w_hy.T + b_y)


def lstm_step(x: Tensor, state: tuple[Tensor, Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Tensor,
              b_hh: Tensor, peephole: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One LSTM step: x (B, D), (h, c) (B, H) each -> (h, c); ``peephole`` is (3, H) or None."""
    h, c = state
    i, f, g, o = (x @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=-1)
    if peephole is not None:
        i, f = i + peephole[0] * c, f + peephole[1] * c
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    if peephole is not None:
        o = o + peephole[2] * c
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_step(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """One GRU step: x (B, D), h (B, H) -> h (B, H)."""
    x_r, x_z, x_n = (x @ w_ih.T + b_ih).chunk(3, dim=-1)
    h_r, h_z, h_n = (h @ w_hh.T + b_hh).chunk(3, dim=-1)
    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


class RecurrentCell(nn.Module):
    """The weights of one layer in one direction, and its step (one of the functions above)."""

    def __init__(self, kind: CellKind, input_size: int, hidden_size: int,
                 nonlinearity: str = "tanh", peepholes: bool = False):
        super().__init__()
        self.kind, self.nonlinearity, self.hidden_size = kind, nonlinearity, hidden_size
        rows = GATES[kind] * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size))
        self.weight_hh = nn.Parameter(torch.empty(rows, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(rows))
        self.bias_hh = nn.Parameter(torch.empty(rows))
        self.peephole = nn.Parameter(torch.empty(3, hidden_size)) if peepholes else None
        if kind == "jordan":
            self.weight_hy = nn.Parameter(torch.empty(hidden_size, hidden_size))
            self.bias_y = nn.Parameter(torch.empty(hidden_size))
        bound = 1 / math.sqrt(hidden_size)       # torch's initialisation of its RNN modules
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    def init_state(self, batch_size: int) -> State:
        zeros = self.weight_hh.new_zeros(batch_size, self.hidden_size)
        return (zeros, zeros) if self.kind == "lstm" else zeros

    def step(self, x: Tensor, state: State) -> State:
        weights = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        if self.kind == "elman":
            return elman_step(x, state, *weights, self.nonlinearity)
        if self.kind == "jordan":
            return jordan_step(x, state, *weights, self.weight_hy, self.bias_y)
        if self.kind == "lstm":
            return lstm_step(x, state, *weights, self.peephole)
        return gru_step(x, state, *weights)


def unroll(cell: RecurrentCell, x: Tensor, state: State, mask: Tensor | None = None,
           record: list[Tensor] | None = None) -> tuple[Tensor, State]:
    """Run ``cell`` over time: x (B, T, D) -> outputs (B, T, H) and the final state.

    Where ``mask`` (B, T) is false the state is carried unchanged and the output is zero, so a
    padded sequence ends in the state of its last real position. With ``record``, each step's
    output h_t (B, H) is appended to it with ``retain_grad()``: it is the very tensor that feeds
    both the output and the next step, so its gradient is the total dLoss/dh_t.
    """
    outputs = []
    for t in range(x.shape[1]):
        new = cell.step(x[:, t], state)
        if mask is not None:
            keep = mask[:, t, None]
            new = tuple(torch.where(keep, n, s) for n, s in zip(new, state)) if isinstance(new, tuple) \
                else torch.where(keep, new, state)
        state = new
        output = state[0] if isinstance(state, tuple) else state
        if record is not None and output.requires_grad:
            output.retain_grad()
            record.append(output)
        outputs.append(output if mask is None else output * mask[:, t, None])
    return torch.stack(outputs, dim=1), state


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence of x (B, T, ...) within its length, leaving the padding in place."""
    time = torch.arange(x.shape[1], device=x.device)
    index = torch.where(time < lengths[:, None], lengths[:, None] - 1 - time, time)   # (B, T)
    return x.gather(1, index.view(*index.shape, *(1,) * (x.dim() - 2)).expand_as(x))


class Recurrent(nn.Module):
    """A deep, optionally bidirectional recurrent layer over padded batches.

    Args:
        kind: "elman", "jordan", "lstm" or "gru".
        input_size, hidden_size: D and H.
        n_layers: stacked layers; each reads the outputs of the one below.
        dropout: on the outputs of every layer but the last (as torch's modules do).
        bidirectional: a second pass reads each sequence backwards; outputs are concatenated.
        nonlinearity: "tanh" or "relu", for Elman.
        peepholes: LSTM peephole connections.
        fused: use torch's fused module (None: whenever one matches the cell).

    ``forward(x, state, lengths)``: x (B, T, D), an optional state, optional lengths (B,) of
    real positions (sequences left-aligned); returns outputs (B, T, H x directions), zero at
    padding, and the final state: (S, B, H), or a pair of those for the LSTM, ordered like
    torch's (layer-major, forward direction first).
    """

    def __init__(self, kind: CellKind, input_size: int, hidden_size: int, n_layers: int = 1,
                 dropout: float = 0.0, bidirectional: bool = False, nonlinearity: str = "tanh",
                 peepholes: bool = False, fused: bool | None = None):
        super().__init__()
        if kind not in CELL_KINDS:
            raise ConfigError(f"unknown recurrent cell {kind!r}; choose one of {', '.join(CELL_KINDS)}")
        if nonlinearity not in ("tanh", "relu"):
            raise ConfigError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        if peepholes and kind != "lstm":
            raise ConfigError("peepholes exist only for the lstm cell")
        matches = kind in ("elman", "lstm", "gru") and not peepholes
        if fused and not matches:
            raise ConfigError(f"torch has no fused module for {kind}{' with peepholes' if peepholes else ''}")
        self.kind, self.input_size, self.hidden_size = kind, input_size, hidden_size
        self.n_layers, self.directions = n_layers, 2 if bidirectional else 1
        self.fused = matches if fused is None else fused
        if self.fused:
            module = {"elman": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind]
            options = {"nonlinearity": nonlinearity} if kind == "elman" else {}
            self.module = module(input_size, hidden_size, n_layers, batch_first=True,
                                 dropout=dropout if n_layers > 1 else 0.0,
                                 bidirectional=bidirectional, **options)
        else:
            self.cells = nn.ModuleList(
                RecurrentCell(kind, input_size if layer == 0 else hidden_size * self.directions,
                              hidden_size, nonlinearity, peepholes)
                for layer in range(n_layers) for _ in range(self.directions)
            )
            self.dropout = nn.Dropout(dropout)
        if kind == "lstm":
            self._init_forget_bias()
        self.record: list[Tensor] | None = None       # see ``unroll``; the top layer's forward pass

    def unfused(self) -> Recurrent:
        """The same layer on our unrolled cells, with this one's weights (for probing each step)."""
        if not self.fused:
            return self
        module = self.module
        copy = Recurrent(self.kind, self.input_size, self.hidden_size, self.n_layers,
                         dropout=module.dropout, bidirectional=self.directions == 2,
                         nonlinearity=getattr(module, "nonlinearity", "tanh"), fused=False)
        copy = copy.to(next(self.parameters())).train(self.training)     # same dtype and device
        with torch.no_grad():
            for layer in range(self.n_layers):
                for direction in range(self.directions):
                    suffix = f"_l{layer}" + ("_reverse" if direction else "")
                    cell = copy.cells[layer * self.directions + direction]
                    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                        getattr(cell, name).copy_(getattr(module, name + suffix))
        return copy

    def _init_forget_bias(self) -> None:
        # Forget-gate bias 1 (Gers et al. 2000; Jozefowicz et al. 2015): remember by default.
        hidden = self.hidden_size
        with torch.no_grad():
            for name, bias in self.named_parameters():
                if "bias_ih" in name:
                    bias[hidden:2 * hidden].fill_(1.0)
                elif "bias_hh" in name:
                    bias[hidden:2 * hidden].zero_()

    def init_state(self, batch_size: int) -> State:
        reference = next(self.parameters())
        zeros = reference.new_zeros(self.n_layers * self.directions, batch_size, self.hidden_size)
        return (zeros, zeros) if self.kind == "lstm" else zeros

    def forward(self, x: Tensor, state: State | None = None,
                lengths: Tensor | None = None) -> tuple[Tensor, State]:
        self._check(x, lengths)
        if state is None:
            state = self.init_state(x.shape[0])
        if self.fused:
            return self._forward_fused(x, state, lengths)
        return self._forward_cells(x, state, lengths)

    def _forward_fused(self, x: Tensor, state: State, lengths: Tensor | None) -> tuple[Tensor, State]:
        if lengths is None:
            return self.module(x, state)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, state = self.module(packed, state)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=x.shape[1])
        return outputs, state

    def _forward_cells(self, x: Tensor, state: State, lengths: Tensor | None) -> tuple[Tensor, State]:
        batch, length = x.shape[:2]
        lengths = lengths if lengths is not None else torch.full((batch,), length, device=x.device)
        mask = torch.arange(length, device=x.device) < lengths[:, None]                    # (B, T)
        finals = []
        for layer in range(self.n_layers):
            outputs = []
            for direction in range(self.directions):
                index = layer * self.directions + direction
                initial = tuple(s[index] for s in state) if isinstance(state, tuple) else state[index]
                inputs = x if direction == 0 else reverse_padded(x, lengths)
                top_forward = layer == self.n_layers - 1 and direction == 0
                output, final = unroll(self.cells[index], inputs, initial, mask,
                                       self.record if top_forward else None)
                outputs.append(output if direction == 0 else reverse_padded(output, lengths))
                finals.append(final)
            x = torch.cat(outputs, dim=-1)                                                 # (B, T, H x dirs)
            if layer < self.n_layers - 1:
                x = self.dropout(x)
        if self.kind == "lstm":
            return x, (torch.stack([h for h, _ in finals]), torch.stack([c for _, c in finals]))
        return x, torch.stack(finals)

    def _check(self, x: Tensor, lengths: Tensor | None) -> None:
        if x.dim() != 3:
            raise DataError(f"recurrent input must be (batch, time, features), got shape {tuple(x.shape)}")
        if x.shape[2] != self.input_size:
            raise DataError(f"recurrent input has {x.shape[2]} features, the layer expects {self.input_size}")
        if x.shape[1] == 0:
            raise DataError("recurrent input has zero time steps; give sequences of length >= 1")
        if lengths is not None:
            if lengths.shape != (x.shape[0],):
                raise DataError(f"lengths must have shape ({x.shape[0]},), got {tuple(lengths.shape)}")
            if int(lengths.min()) < 1 or int(lengths.max()) > x.shape[1]:
                bad = int(torch.argmax(((lengths < 1) | (lengths > x.shape[1])).int()))
                raise DataError(
                    f"sequence {bad} has length {int(lengths[bad])}, outside 1..{x.shape[1]} "
                    "(the padded length); fix the lengths or drop empty sequences"
                )
