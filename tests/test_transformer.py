"""The Transformer's blocks and decoder-only models: the block's arrangements, gradient
checkpointing, bf16 autocast, the sliding-window ring cache, presets, sliding generation and
truncated BPTT. The contract suite (tests/test_contracts.py) holds every position scheme to the
two-views contract; this file checks what is particular to the Transformer."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from seqlab import registry
from seqlab.errors import ConfigError
from seqlab.layers.attention import MultiHeadAttention, attention_ref
from seqlab.layers.block import TransformerBlock
from seqlab.layers.feedforward import FeedForward
from seqlab.layers.kv_cache import SlidingKeyValueCache
from seqlab.layers.norms import make_norm
from seqlab.layers.positions import ALiBi, RotaryPositions
from seqlab.training import TrainConfig, Trainer

from helpers import tiny_task

D, H = 16, 4


def make_block(positions=None, n_kv_heads=None, norm="layernorm", norm_position="pre", dropout=0.0,
               checkpoint=False, window=None, activation="gelu", seed=0) -> TransformerBlock:
    torch.manual_seed(seed)
    attention = MultiHeadAttention(D, H, n_kv_heads, causal=True, positions=positions, dropout=dropout,
                                   window=window)
    return TransformerBlock(attention, FeedForward(D, 4 * D, activation, dropout), partial(make_norm, norm, D),
                            norm_position=norm_position, dropout=dropout, checkpoint=checkpoint)


def test_pre_and_post_norm_arrangements_by_hand():
    x = torch.randn(2, 5, D)
    for position in ("pre", "post"):
        block = make_block(norm_position=position).eval()
        attend = lambda h: block.attention(h)                                         # noqa: E731
        with torch.no_grad():
            if position == "pre":
                h = x + attend(block.attention_norm(x))
                expected = h + block.feedforward(block.feedforward_norm(h))
            else:
                h = block.attention_norm(x + attend(x))
                expected = block.feedforward_norm(h + block.feedforward(h))
            torch.testing.assert_close(block(x), expected, rtol=0, atol=0)
    pre, post = make_block(norm_position="pre").eval(), make_block(norm_position="post").eval()
    with torch.no_grad():
        assert not torch.allclose(pre(x), post(x))


@pytest.mark.parametrize("positions", [None, "rope", "alibi"])
def test_checkpointed_and_plain_blocks_give_equal_gradients(positions):
    # With dropout on, so the recomputation must redraw the same masks.
    def run(checkpoint: bool):
        scheme = {"rope": RotaryPositions(D // H), "alibi": ALiBi(H), None: None}[positions]
        block = make_block(scheme, n_kv_heads=2, dropout=0.1, checkpoint=checkpoint).train()
        x = torch.randn(3, 9, D, generator=torch.Generator().manual_seed(1), requires_grad=True)
        torch.manual_seed(5)
        out = block(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), x.grad, {n: p.grad for n, p in block.named_parameters()}

    plain, checkpointed = run(False), run(True)
    torch.testing.assert_close(checkpointed[0], plain[0], rtol=0, atol=0)
    torch.testing.assert_close(checkpointed[1], plain[1], rtol=1e-6, atol=1e-7)
    for name, grad in plain[2].items():
        torch.testing.assert_close(checkpointed[2][name], grad, rtol=1e-6, atol=1e-7, msg=name)


def test_checkpointing_keeps_fewer_activations():
    saved = {}

    def count(checkpoint: bool) -> int:
        block = make_block(checkpoint=checkpoint).train()
        x = torch.randn(2, 32, D, requires_grad=True)
        total = [0]

        def pack(tensor):
            total[0] += tensor.numel()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            block(x).sum()
        return total[0]

    saved["plain"], saved["checkpointed"] = count(False), count(True)
    assert saved["checkpointed"] < saved["plain"] / 4, saved


@pytest.mark.parametrize("positions, norm, activation", [(None, "layernorm", "gelu"), ("rope", "rmsnorm", "swiglu"),
                                                         ("alibi", "layernorm", "geglu_tanh")])
def test_bf16_autocast_block_stays_close_to_fp32(positions, norm, activation):
    # Stated tolerance: 3e-2 absolute and relative on a unit-scale residual stream (bf16 keeps
    # 8 significant bits, ~4e-3 per rounding; two sublayers of several roundings each).
    scheme = {"rope": RotaryPositions(D // H), "alibi": ALiBi(H), None: None}[positions]
    block = make_block(scheme, n_kv_heads=2, norm=norm, activation=activation).eval()
    x = torch.randn(2, 12, D, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = block(x)
            assert block.feedforward(x).dtype == torch.bfloat16      # the sublayers ran in bf16
    assert not torch.equal(low.float(), reference)
    torch.testing.assert_close(low.float(), reference, rtol=3e-2, atol=3e-2)
    branch = reference - x                       # what the sublayers add: must be resolved too
    assert branch.abs().mean() > 0.1
    with pytest.raises(AssertionError):          # a bf16 path that dropped a sublayer would fail
        torch.testing.assert_close(low.float() - 0.5 * branch, reference, rtol=3e-2, atol=3e-2)


# --- sliding windows ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [None, "rope", "alibi"])
@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_sliding_window_attention_equals_reference_in_any_chunks(kind, chunk):
    torch.manual_seed(0)
    window, length = 5, 17
    positions = {"rope": RotaryPositions(D // H), "alibi": ALiBi(H), None: None}[kind]
    layer = MultiHeadAttention(D, H, 2, causal=True, positions=positions, window=window).double().eval()
    x = torch.randn(2, length, D, dtype=torch.float64)
    q = layer.q_proj(x).view(2, length, H, -1).transpose(1, 2)
    k = layer.k_proj(x).view(2, length, 2, -1).transpose(1, 2)
    v = layer.v_proj(x).view(2, length, 2, -1).transpose(1, 2)
    bias = None
    if kind == "rope":
        q, k = positions(q, k, 0)
    elif kind == "alibi":
        bias = positions.bias(length, length, 0)
    expected = layer.out_proj(attention_ref(q, k, v, causal=True, bias=bias, window=window)
                              .transpose(1, 2).reshape(2, length, D))
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
    cache = layer.make_cache(2, window)
    assert isinstance(cache, SlidingKeyValueCache)
    pieces = [layer(x[:, s: s + chunk], cache=cache) for s in range(0, length, chunk)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), expected, rtol=1e-10, atol=1e-10)
    assert cache.capacity == window + min(chunk, length) - 1


def test_attention_ref_window_by_brute_force():
    # One head, values = one-hot keys' indices: the output row is the attention distribution.
    q = torch.zeros(1, 1, 6, 2, dtype=torch.float64)          # equal scores: uniform over visible keys
    k = torch.zeros(1, 1, 6, 2, dtype=torch.float64)
    v = torch.eye(6, dtype=torch.float64)[None, None]
    out = attention_ref(q, k, v, causal=True, window=3)[0, 0]
    for i in range(6):
        visible = [j for j in range(6) if i - 3 < j <= i]
        torch.testing.assert_close(out[i], torch.tensor([1 / len(visible) if j in visible else 0.0 for j in range(6)],
                                                        dtype=torch.float64))


def test_ring_cache_steps_in_place_and_keeps_the_last_window():
    cache = SlidingKeyValueCache(1, 1, 4, 2, torch.float64)
    pointer = cache.key_buffer.data_ptr()
    for position in range(11):
        value = torch.full((1, 1, 1, 2), float(position), dtype=torch.float64)
        cache.append(value, value)
    assert cache.key_buffer.data_ptr() == pointer and cache.capacity == 4 and cache.length == 11
    assert sorted(cache.key_positions().tolist()) == [7, 8, 9, 10]
    stored = cache.keys()[0, 0, :, 0]
    torch.testing.assert_close(stored, cache.key_positions().to(torch.float64))


def test_generation_past_max_len_slides_without_rereading_the_prompt(monkeypatch):
    # RoPE, ALiBi and sinusoidal models read the prompt once and step on; learned positions
    # re-read the last tokens when the table ends.
    task = tiny_task(2000)
    for positions, prefills in (("rope", 1), ("alibi", 1), ("sinusoidal", 1), ("learned", None)):
        torch.manual_seed(0)
        model = registry.build("transformer", task, max_len=8, d_model=16, n_layers=1, positions=positions)
        calls = []
        original = model.prefill
        monkeypatch.setattr(model, "prefill", lambda tokens: calls.append(tokens.shape[1]) or original(tokens))
        out = model.generate(torch.zeros(1, 3, dtype=torch.long), 30, seed=0)
        assert out.shape == (1, 33)
        if prefills is None:
            assert len(calls) > 1 and max(calls) <= 8
        else:
            assert calls == [3]
            assert all(cache.capacity == 8 for cache in model.forward_from(out[:, :1], None)[1])


# --- the models -------------------------------------------------------------------------------


def test_presets():
    task = tiny_task(2000)
    llama = registry.build("llama", task)
    gpt = registry.build("gpt", task)
    assert llama.config.n_kv_heads == 2 and llama.config.positions == "rope"
    assert llama.head.weight is not llama.token_embedding.weight
    assert gpt.head.weight is gpt.token_embedding.weight
    assert not any(name.endswith("bias") for name, _ in llama.named_parameters())
    assert type(llama.blocks[0].feedforward_norm).__name__ == "RMSNorm"
    assert llama.blocks[0].feedforward.gate is not None and llama.config.hidden_width == 352
    assert llama.blocks[0].attention.k_proj.out_features == 2 * (128 // 4)
    assert {name: getattr(gpt.config, name) for name in ("positions", "norm", "activation", "tie_embeddings")} == \
        {"positions": "learned", "norm": "layernorm", "activation": "gelu", "tie_embeddings": True}


@pytest.mark.parametrize("overrides, match", [
    ({"n_heads": 3}, "n_heads"), ({"n_kv_heads": 3}, "n_kv_heads"), ({"positions": "relative"}, "positions"),
    ({"d_model": 12, "n_heads": 4, "positions": "rope"}, "even head width"), ({"d_ff": 0}, "d_ff"),
])
def test_bad_configs(overrides, match):
    with pytest.raises(ConfigError, match=match):
        registry.build("transformer", tiny_task(2000), **{"d_model": 16, **overrides})


def test_truncated_bptt_with_a_bounded_cache():
    # A RoPE model trains with truncated BPTT: each window reads the (detached) keys of the
    # windows before it, at most max_len of them per layer; the result differs from training on
    # independent windows, so the state really is carried.
    task = tiny_task(4000, context=8)

    def train(tbptt: bool):
        torch.manual_seed(0)
        model = registry.build("transformer", task, max_len=12, d_model=16, n_layers=1, positions="rope")
        config = TrainConfig(steps=4, batch_size=2, lr=1e-2, warmup_steps=0, eval_every=100, tbptt=tbptt,
                             progress=False)
        Trainer(model, task, config).fit()
        return model

    carried, plain = train(True), train(False)
    assert not torch.allclose(carried.head.weight, plain.head.weight)
    state = carried.init_state(2)
    for index in range(3):
        carried.forward_from(task.stream_batch(2, index)[0], state)
    assert all(cache.capacity <= 12 + 8 - 1 for cache in state)
    assert all(sorted(cache.key_positions().tolist())[-12:] == list(range(12, 24)) for cache in state)
