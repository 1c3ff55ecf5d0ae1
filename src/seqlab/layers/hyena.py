"""The Hyena operator (Poli et al. 2023, "Hyena Hierarchy: Towards Larger Convolutional Language
Models", section 3 and Algorithm 1-3): long causal convolutions with implicitly parametrised
filters, interleaved with elementwise gates.

    [x^1, ..., x^N, v] = CausalConv1d(u W_in)        N + 1 projections of width D, short conv
    z^1 = v
    z^{n+1}_t = x^n_t * (h^n * z^n)_t                n = 1..N  (the paper's eq. 3)
    out = z^{N+1} W_out

where (h * z)_t = sum_{s<=t} h_{t-s} z_s + b z_t is a causal convolution as long as the
sequence, one filter per channel, with the reference's per-channel "bias" b at lag 0. The
filters are not stored but computed from the position (section 3.3):

    h^n_t = FFN(PositionalFeatures(t)) * exp(-alpha_c t / l_max)

``ImplicitFilter`` below. The convolutions run in O(T log T) through the FFT
(``seqlab.ops.long_conv.fft_causal_conv``, zero-padded to 2T so that nothing wraps around).

Recurrent view. A long convolution has no constant-size state: the output at position t reads
every earlier input of that convolution. The state is the short convolution's window
(B, (N+1) D, K-1) and the inputs z^1..z^N that entered the N long convolutions so far,
(B, N, D, t), one more position per token. A step at position t computes each long
convolution's new output directly, sum_{s<=t} h_{t-s} z_s: O(t D N) time and O(t D N) memory
(the filter values, evaluated once per parameter version while gradients are off, are
memoised by ``ImplicitFilter``). Distilling the filters into a small SSM for constant-cost
decoding (Massaroli et al. 2023, "Laughing Hyena Distillery") is not done here.

Shapes: B batch, T time, D model width (C: channels in general), N the operator's order
(number of long convolutions), K the short convolution's width, F the filter FFN's width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.layers.causal_conv import CausalConv1d
from seqlab.layers.mamba import no_weight_decay
from seqlab.ops.long_conv import conv_output_at_last_position, fft_causal_conv

HyenaState = tuple[Tensor, Tensor]          # (short convolution window, long convolutions' inputs)


class Sin(nn.Module):
    """sin(w * x) with a learnable frequency per feature (the filter FFN's activation, whose
    high frequencies let the FFN express filters with high-frequency content, section 3.3)."""

    def __init__(self, width: int, frequency: float = 1.0):
        super().__init__()
        self.frequency = nn.Parameter(torch.full((width,), frequency))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.frequency * x)


class ImplicitFilter(nn.Module):
    """Hyena's implicit long filters (section 3.3; the reference's ``HyenaFilter`` with
    ``PositionalEmbedding`` and ``ExponentialModulation``):

        tau = t / l_max
        features(t) = [tau, cos(2 pi f_j tau), -sin(2 pi f_j tau)]_{j<bands},
                      f_j evenly spaced in [1e-4, bands - 1], emb_dim = 1 + 2 bands
        h^n_t[c] = (W_out Sin(W_2 Sin(W_1 Sin(W_0 features(t)))))[n, c] * exp(-alpha_c tau)

    Time is normalised by the fixed ``l_max``, never by the requested length, so the value at
    position t is the same whatever length is asked for (and positions past l_max are still
    defined): the recurrent view, which evaluates the filter up to the current position, agrees
    with the parallel view. The decay rates alpha_c are spread evenly over the channels (the same
    spread for each of the N filters) between the rate at which exp(-alpha tau) reaches
    ``decay_target`` at t = fast_decay_span * l_max and the one reaching it at
    t = slow_decay_span * l_max. ``bias`` (N, C) is the lag-0 skip term of each convolution.

    While gradients are off, ``filters`` memoises its evaluation (a table of at least 64
    positions, doubled when a longer one is asked for) and recomputes it when a parameter has
    changed (its storage or its version counter), so a decoding step does not re-run the FFN
    over all t positions.

    Args:
        channels: C.
        n_filters: N.
        emb_dim: number of positional features, odd, >= 3.
        filter_order: F, the FFN's width.
        l_max: the time scale of the features and of the decay.
        fast_decay_span, slow_decay_span: see above; 0 < fast <= slow.
        decay_target: the window's value at t = span * l_max.
        n_inner_layers: hidden F -> F layers of the FFN.
        sin_frequency: the initial frequency of the Sin activations.
    """

    def __init__(self, channels: int, n_filters: int, emb_dim: int = 33, filter_order: int = 64,
                 l_max: int = 1024, fast_decay_span: float = 0.3, slow_decay_span: float = 1.5,
                 decay_target: float = 1e-2, n_inner_layers: int = 2, sin_frequency: float = 1.0):
        super().__init__()
        if emb_dim < 3 or emb_dim % 2 == 0:
            raise ConfigError(f"emb_dim must be odd and >= 3, got {emb_dim}")
        self.channels, self.n_filters, self.l_max = channels, n_filters, l_max
        self.bands = (emb_dim - 1) // 2
        layers: list[nn.Module] = [nn.Linear(emb_dim, filter_order), Sin(filter_order, sin_frequency)]
        for _ in range(n_inner_layers):
            layers += [nn.Linear(filter_order, filter_order), Sin(filter_order, sin_frequency)]
        layers.append(nn.Linear(filter_order, n_filters * channels, bias=False))
        self.ffn = nn.Sequential(*layers)
        # exp(-alpha * span) = decay_target; the rates are fixed, made in the parameters' dtype when used
        self.slowest_rate = math.log(1 / decay_target) / slow_decay_span
        self.fastest_rate = math.log(1 / decay_target) / fast_decay_span
        self.bias = nn.Parameter(torch.randn(n_filters, channels))
        # The reference trains the filter without weight decay.
        no_weight_decay(*self.parameters())
        self._memo: tuple[tuple, Tensor] | None = None

    def normalised_time(self, length: int) -> Tensor:
        """(length,) tau = t / l_max for t = 0 .. length-1."""
        return torch.arange(length, device=self.bias.device, dtype=self.bias.dtype) / self.l_max

    def positional_features(self, length: int) -> Tensor:
        """(length, emb_dim) features of positions 0 .. length-1 (see the class docstring)."""
        tau = self.normalised_time(length)
        frequencies = torch.linspace(1e-4, self.bands - 1, self.bands, device=tau.device, dtype=tau.dtype)
        angles = 2 * math.pi * tau[:, None] * frequencies                                  # (T, bands)
        return torch.cat([tau[:, None], torch.cos(angles), -torch.sin(angles)], dim=-1)

    def decay_rates(self) -> Tensor:
        """(C,) alpha_c, evenly spaced from the slowest rate to the fastest."""
        return torch.linspace(self.slowest_rate, self.fastest_rate, self.channels, device=self.bias.device,
                              dtype=self.bias.dtype)

    def window(self, length: int) -> Tensor:
        """(C, length) the exponential decay window exp(-alpha_c t / l_max)."""
        return torch.exp(-self.decay_rates()[:, None] * self.normalised_time(length))

    def evaluate(self, length: int) -> Tensor:
        """(N, C, length) the filters at positions 0 .. length-1, computed afresh."""
        values = self.ffn(self.positional_features(length))                             # (T, N C)
        values = values.view(length, self.n_filters, self.channels).permute(1, 2, 0)    # (N, C, T)
        return values * self.window(length)

    def filters(self, length: int) -> Tensor:
        """(N, C, length) the filters h^n_t[c] for t < length (memoised while gradients are off)."""
        if torch.is_grad_enabled():
            return self.evaluate(length)
        key = tuple((p.device, p.dtype, p.data_ptr(), p._version) for p in self.parameters())
        same_parameters = self._memo is not None and self._memo[0] == key
        if not same_parameters or self._memo[1].shape[-1] < length:
            covered = self._memo[1].shape[-1] if same_parameters else 32
            table_length = max(2 * covered, 1 << (length - 1).bit_length())     # a power of two, >= 64
            self._memo = key, self.evaluate(table_length)
        return self._memo[1][..., :length]


class HyenaMixer(nn.Module):
    """The order-N Hyena operator as a mixer; see the module docstring.

    Args:
        d_model: D.
        order: N, the number of long convolutions (and of gates).
        filter_order: F, the width of the implicit filter's FFN.
        emb_dim: the filter's positional features (odd).
        short_filter: K, the short causal convolution's width.
        l_max: the filter's time scale (positions beyond it are still defined).
        fast_decay_span, slow_decay_span: the filter windows' fastest and slowest decay, as the
            fraction of l_max over which the window falls to 1e-2.
        bias: biases in the input and output projections.
    """

    def __init__(self, d_model: int, order: int = 2, filter_order: int = 64, emb_dim: int = 33,
                 short_filter: int = 3, l_max: int = 1024, fast_decay_span: float = 0.3,
                 slow_decay_span: float = 1.5, bias: bool = True):
        super().__init__()
        self.d_model, self.order = d_model, order
        self.in_proj = nn.Linear(d_model, (order + 1) * d_model, bias=bias)
        self.short_conv = CausalConv1d((order + 1) * d_model, short_filter)
        self.filter = ImplicitFilter(d_model, order, emb_dim, filter_order, l_max, fast_decay_span, slow_decay_span)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def init_state(self, batch_size: int) -> HyenaState:
        """The zero window (B, (N+1) D, K-1) and no long-convolution inputs yet (B, N, D, 0)."""
        return (self.short_conv.init_state(batch_size),
                self.out_proj.weight.new_zeros(batch_size, self.order, self.d_model, 0))

    def forward(self, x: Tensor, state: HyenaState | None = None) -> tuple[Tensor, HyenaState]:
        """The operator over T >= 1 new positions, continuing after the P positions in ``state``.

        With T = 1 (a step) each long convolution's output is the direct sum over the stored
        inputs, O((P+1) D) per convolution; with T > 1 the FFT convolution runs over all
        P + T positions and the last T outputs are kept.

        Args:
            x: (B, T, D).
            state: after the previous positions; None is ``init_state``.
        Returns:
            (B, T, D) outputs and the state after the last position, whose long-convolution
            inputs are (B, N, D, P + T).
        """
        batch_size, length, _ = x.shape
        window, past_inputs = self.init_state(batch_size) if state is None else state
        past_inputs = past_inputs.to(x.dtype)
        past = past_inputs.shape[-1]
        projections, window = self.short_conv(self.in_proj(x), window.to(x.dtype))    # (B, T, (N+1) D)
        *gates, z = projections.split(self.d_model, dim=-1)
        filters = self.filter.filters(past + length).to(x.dtype)                        # (N, D, P+T)
        bias = self.filter.bias.to(x.dtype)                                             # (N, D)
        new_inputs = []
        for n, gate in enumerate(gates):
            new_inputs.append(z)
            inputs = torch.cat([past_inputs[:, n], z.transpose(1, 2)], dim=-1)           # (B, D, P+T)
            if length == 1:
                convolved = conv_output_at_last_position(inputs, filters[n], bias[n])[:, None]   # (B, 1, D)
            else:
                convolved = fft_causal_conv(inputs.transpose(1, 2), filters[n], bias[n])[:, past:]
            z = gate * convolved                                                        # (B, T, D)
        all_inputs = torch.cat([past_inputs, torch.stack(new_inputs, dim=1).transpose(2, 3)], dim=-1)
        return self.out_proj(z), (window, all_inputs)
