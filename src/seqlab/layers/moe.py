"""Mixture-of-experts feed-forward: a router sends each token to k of N expert networks.

For a token x with router logits z = W_r x (N experts) and probabilities p = softmax(z):

* Switch Transformer (Fedus et al. 2021), top-1:  y = p_e E_e(x),  e = argmax p. The gate is
  the raw probability, so the router gets a gradient through it.
* Mixtral (Jiang et al. 2024), top-2 (any k > 1):  y = sum_{e in top-k} w_e E_e(x),
  w = softmax of the k chosen logits (the probabilities renormalised over the chosen k).

Auxiliary losses, left in ``auxiliary_loss`` after each training forward for the task's loss
to add (``seqlab.contracts.auxiliary_loss``):

* load balancing (Fedus et al. 2021, eq. 4):  alpha N sum_i f_i P_i, with f_i the fraction of
  the (token, choice) assignments sent to expert i and P_i the mean router probability of
  expert i, both over real tokens only (padding does not vote). It is alpha when routing is
  uniform and grows as load concentrates;
* router z-loss (Zoph et al. 2022, ST-MoE, eq. 5):  beta mean_tokens (logsumexp z)^2, which
  keeps the logits small and the router numerically stable.

Capacity (training only): with factor c, each expert takes at most ceil(c k T / N) of the T real
tokens' assignments, first choices before second choices, in token order (GShard's priority);
the rest are dropped. A token whose every choice is dropped gets 0 here, so the block's
residual passes it on unchanged. In eval mode every token is routed: a token's output then never
depends on the other tokens of the batch, so the two views of a model agree.

``statistics()`` reports the last forward's routing: the largest expert load relative to a
uniform one (1 = balanced, N = all on one expert) and the fraction of assignments dropped.

Shapes: (*, D) in and out; T tokens after flattening, N experts, k chosen per token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.errors import ConfigError
from seqlab.layers.feedforward import Activation, FeedForward


class MixtureOfExperts(nn.Module):
    """Top-k routed feed-forward experts with balancing and z losses; see the module docstring.

    Args:
        d_model: D.
        d_hidden: each expert's hidden width.
        n_experts: N >= 1.
        top_k: k experts per token, 1 <= k <= N.
        activation, dropout, bias: of each expert (:class:`FeedForward`).
        capacity_factor: c; None routes every token in training too (no drops).
        balance_weight: alpha of the load-balancing loss.
        z_loss_weight: beta of the router z-loss.
    """

    def __init__(self, d_model: int, d_hidden: int, n_experts: int, top_k: int, activation: Activation = "gelu",
                 dropout: float = 0.0, bias: bool = True, *, capacity_factor: float | None = None,
                 balance_weight: float = 0.01, z_loss_weight: float = 1e-3):
        super().__init__()
        if n_experts < 1:
            raise ConfigError(f"n_experts must be >= 1, got {n_experts}")
        if not 1 <= top_k <= n_experts:
            raise ConfigError(f"experts_top_k ({top_k}) must be between 1 and the number of experts ({n_experts})")
        if capacity_factor is not None and not capacity_factor > 0:
            raise ConfigError(f"capacity_factor must be positive, got {capacity_factor}")
        if balance_weight < 0 or z_loss_weight < 0:
            raise ConfigError(f"balance_weight and z_loss_weight must be >= 0, got {balance_weight}, {z_loss_weight}")
        self.n_experts, self.top_k, self.capacity_factor = n_experts, top_k, capacity_factor
        self.balance_weight, self.z_loss_weight = balance_weight, z_loss_weight
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(d_model, d_hidden, activation, dropout, bias)
                                     for _ in range(n_experts))
        self.auxiliary_loss: Tensor | None = None
        self._statistics: dict[str, float] = {}

    def extra_repr(self) -> str:
        return (f"n_experts={self.n_experts}, top_k={self.top_k}, capacity_factor={self.capacity_factor}, "
                f"balance_weight={self.balance_weight}, z_loss_weight={self.z_loss_weight}")

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Router logits (T, N) in float32 at least (bf16 logits would tie and round the
        gates), the chosen experts (T, k) and their gates (T, k)."""
        logits = self.router(x)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))        # (T, N)
        chosen_logits, chosen = logits.topk(self.top_k, dim=-1)                      # (T, k)
        if self.top_k == 1:
            gates = torch.softmax(logits, dim=-1).gather(-1, chosen)                 # Switch: raw p_e
        else:
            gates = torch.softmax(chosen_logits, dim=-1)                             # renormalised
        return logits, chosen, gates

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Args:
            x: (*, D) token vectors.
            mask: (*) bool, true at real tokens (padding neither votes in the losses nor
                takes capacity); None: all real.
        Returns:
            (*, D); a dropped token's row is zero.
        """
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])                                            # (T, D)
        real = (torch.ones(tokens.shape[0], dtype=torch.bool, device=x.device) if mask is None
                else mask.reshape(-1).to(torch.bool))                                # (T,)
        logits, chosen, gates = self.route(tokens)
        n_tokens = tokens.shape[0]
        # Assignments in priority order: every token's first choice, then every second choice.
        expert_of = chosen.t().reshape(-1)                                           # (k T,)
        token_of = torch.arange(n_tokens, device=x.device).repeat(self.top_k)        # (k T,)
        gate_of = gates.t().reshape(-1)
        routed = real[token_of]                                                      # (k T,)
        if self.training and self.capacity_factor is not None:
            capacity = math.ceil(self.capacity_factor * self.top_k * int(real.sum()) / self.n_experts)
            one_hot = F.one_hot(expert_of, self.n_experts) * routed[:, None]         # (k T, N)
            rank = (one_hot.cumsum(0) * one_hot).sum(-1)                             # 1-based place in queue
            routed = routed & (rank <= capacity)
        output = torch.zeros_like(tokens)
        for expert_index, expert in enumerate(self.experts):
            picked = (routed & (expert_of == expert_index)).nonzero().squeeze(1)
            if picked.numel():
                rows = token_of[picked]
                output.index_add_(0, rows, expert(tokens[rows]) * gate_of[picked, None].to(tokens.dtype))
        self._record(logits, expert_of, real, routed)
        return output.reshape(shape)

    def _record(self, logits: Tensor, expert_of: Tensor, real: Tensor, routed: Tensor) -> None:
        """Leave the auxiliary loss (training) and the routing statistics of this forward."""
        n_real = real.sum().clamp(min=1)
        real_assignments = real.repeat(self.top_k)
        counts = torch.bincount(expert_of[real_assignments], minlength=self.n_experts).float()
        load = counts / (n_real * self.top_k)                                        # f_i, sums to 1
        probability = (torch.softmax(logits, dim=-1) * real[:, None]).sum(0) / n_real  # P_i
        if self.training:
            balance = self.balance_weight * self.n_experts * (load * probability).sum()
            log_z = torch.logsumexp(logits, dim=-1)
            z_loss = self.z_loss_weight * (log_z.square() * real).sum() / n_real
            self.auxiliary_loss = balance + z_loss
        dropped = 1.0 - routed[real_assignments].float().mean() if bool(real.any()) else torch.zeros(())
        self._statistics = {"expert_max_load": load.max() * self.n_experts, "expert_dropped": dropped}

    def statistics(self) -> dict[str, float]:
        """The last forward's routing: ``expert_max_load`` (max_i f_i N; 1 is balanced) and
        ``expert_dropped`` (the fraction of assignments dropped at capacity)."""
        return {name: float(value) for name, value in self._statistics.items()}
