"""The Transformer against a plain PyTorch GPT: nanoGPT's CPU recipe for shakespeare_char.

nanoGPT's README trains, on a CPU, a 4-layer, 4-head, width-128 GPT with context 64, batch 12, no
dropout, for 2,000 iterations at lr 1e-3 with 100 warm-up steps and a cosine decay to 1e-4
(AdamW, betas (0.9, 0.99), weight decay 0.1, gradient clip 1), on tinyshakespeare's characters
with a 90/10 split; its validation loss is about 1.88. This script trains, in one run:

* **plain**: a minimal GPT in plain PyTorch (fused qkv projection, SDPA, learned positions,
  tied head; nanoGPT's shape, written here) with a bare training loop;
* **gpt**: seqlab's ``gpt`` preset of the same shapes through seqlab's Trainer;
* **llama**: seqlab's ``llama`` preset (RoPE, RMSNorm, SwiGLU, GQA) for the gpt run's wall time.

Both GPTs see the same batches, schedule and optimiser settings. Validation loss is over the
whole validation split, in consecutive windows of 64. Training tokens/s count step time only,
measured apart from the long runs: five alternating runs of 100 steps each (medians), since
on a shared machine two long runs one after the other meet different loads.
MFU is the achieved training FLOP/s (6 N + 12 L T D per token; Kaplan et al. 2020, PaLM's
appendix B) over a large fp32 matmul's FLOP/s measured in the same run. Last, cached generation
of 512 tokens (one step per token) against recomputing the whole prefix for every token.

    python benchmarks/transformer.py [--steps 2000] [--data ../shared/data/tinyshakespeare/input.txt]

Targets (issue 12): val_loss <= plain + 0.02 and <= 1.90; speed_vs_plain_gpt >= 1.0;
llama_val_loss < val_loss.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seqlab import registry
from seqlab.data.corpora import Corpus
from seqlab.models.transformer import gpt2_init
from seqlab.tasks.lm import LanguageModeling
from seqlab.train_config import TrainConfig, learning_rate
from seqlab.training import Trainer, parameter_groups

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt"
SHAPE = {"n_layers": 4, "n_heads": 4, "d_model": 128, "dropout": 0.0}
CONTEXT, BATCH = 64, 12
GENERATED = 512


class PlainBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out_proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(width, dim=-1)
        q, k, v = (z.view(batch, length, self.heads, -1).transpose(1, 2) for z in (q, k, v))  # (B, H, T, E)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, length, width)
        x = x + self.out_proj(y)
        return x + self.down(F.gelu(self.up(self.ln_2(x))))


class PlainGPT(nn.Module):
    """nanoGPT's model in about twenty lines: the yardstick for speed and loss."""

    def __init__(self, vocab: int, width: int, layers: int, heads: int, context: int):
        super().__init__()
        self.token_embedding, self.position_embedding = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.blocks = nn.ModuleList(PlainBlock(width, heads) for _ in range(layers))
        self.final_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        gpt2_init(self, layers)
        self.head.weight = self.token_embedding.weight

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.token_embedding(tokens) + self.position_embedding(torch.arange(tokens.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_norm(x))


def train_config(steps: int, **extra) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=BATCH, lr=1e-3, min_lr_ratio=0.1, warmup_steps=100, weight_decay=0.1,
                       betas=(0.9, 0.99), grad_clip=1.0, eval_every=10 * steps, eval_batches=1, log_every=10 * steps,
                       device="cpu", progress=False, **extra)


def train_plain(model: nn.Module, task: LanguageModeling, config: TrainConfig) -> float:
    """The bare loop over the Trainer's batches and schedule; training tokens per second."""
    decay, no_decay = parameter_groups(model)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=config.betas)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    seconds = 0.0
    for step in range(config.steps):
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        inputs, targets = task.train_batch(BATCH, generator)
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        seconds += time.perf_counter() - started
    return config.steps * BATCH * CONTEXT / seconds


def matmul_flops_per_second(size: int = 2048, repeats: int = 5) -> float:
    """The best FLOP/s of an fp32 (size x size) @ (size x size) product on this machine now."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best


def flops_per_token(model: nn.Module) -> float:
    """Training FLOPs per token: 6 N (forward and backward of the matmuls, embeddings excluded)
    plus 12 L T D for the attention scores and weighted sums."""
    n = sum(p.numel() for name, p in model.named_parameters() if "embedding" not in name)
    return 6 * n + 12 * SHAPE["n_layers"] * CONTEXT * SHAPE["d_model"]


@torch.no_grad()
def generation_speed(vocab: int, rounds: int = 3) -> tuple[float, float]:
    """Tokens/s generating 512 tokens with the cache, and recomputing the prefix for every
    token: the medians of ``rounds`` alternating runs."""
    torch.manual_seed(0)
    model = registry.build("gpt", None, vocab_size=vocab, max_len=GENERATED + 1, **SHAPE).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    cached_rates, recompute_rates = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        cached = model.generate(prompt, GENERATED, temperature=0.0)
        cached_rates.append(GENERATED / (time.perf_counter() - started))
        tokens = prompt
        started = time.perf_counter()
        for _ in range(GENERATED):
            tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
        recompute_rates.append(GENERATED / (time.perf_counter() - started))
        assert torch.equal(tokens, cached), "cached and recomputed greedy generations differ"
    return statistics.median(cached_rates), statistics.median(recompute_rates)


def training_speed(task: LanguageModeling, rounds: int = 5, steps: int = 100) -> tuple[float, float]:
    """Training tokens/s of the plain GPT's bare loop and of the gpt preset through seqlab's
    Trainer, in ``rounds`` alternating runs of ``steps`` steps each (medians): on a shared
    machine, one long run each would compare two different loads."""
    plain_rates, gpt_rates = [], []
    for _ in range(rounds):
        torch.manual_seed(0)
        plain = PlainGPT(task.vocab_size, SHAPE["d_model"], SHAPE["n_layers"], SHAPE["n_heads"], CONTEXT)
        plain_rates.append(train_plain(plain, task, train_config(steps)))
        torch.manual_seed(0)
        model = registry.build_for_task("gpt", task.model_defaults(), SHAPE, task="lm")
        gpt_rates.append(Trainer(model, task, train_config(steps)).fit().tokens_per_second)
    return statistics.median(plain_rates), statistics.median(gpt_rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    if not args.data.is_file():
        print(f"skipped: {args.data} is absent (see ../shared/data/README.md)")
        return 0
    text = args.data.read_text(encoding="utf-8")
    cut = int(0.9 * len(text))
    task = LanguageModeling(Corpus("tinyshakespeare", text[:cut], None), "char", CONTEXT, split="none",
                            valid_corpus=Corpus("tinyshakespeare-valid", text[cut:], None))
    print(f"tinyshakespeare: {len(text[:cut]):,} training and {len(text[cut:]):,} validation characters, "
          f"vocabulary {task.vocab_size}; {args.steps} steps of {BATCH} x {CONTEXT}; "
          f"{torch.get_num_threads()} threads")
    peak = matmul_flops_per_second()

    torch.manual_seed(0)
    plain = PlainGPT(task.vocab_size, SHAPE["d_model"], SHAPE["n_layers"], SHAPE["n_heads"], CONTEXT)
    train_plain(plain, task, train_config(args.steps))
    rows = {"plain": (task.evaluate(plain.eval(), "valid")["loss"], args.steps)}
    gpt_seconds = None
    for name in ("gpt", "llama"):
        torch.manual_seed(0)
        model = registry.build_for_task(name, task.model_defaults(), SHAPE, task="lm")
        extra = {} if gpt_seconds is None else {"budget_seconds": gpt_seconds}
        started = time.perf_counter()
        result = Trainer(model, task, train_config(args.steps * (1 if gpt_seconds is None else 10), **extra)).fit()
        gpt_seconds = gpt_seconds or time.perf_counter() - started
        rows[name] = (task.evaluate(model.eval(), "valid")["loss"], result.steps)
    plain_rate, gpt_rate = training_speed(task)
    mfu = gpt_rate * flops_per_token(registry.build_for_task("gpt", task.model_defaults(), SHAPE, task="lm")) / peak
    cached_rate, recompute_rate = generation_speed(task.vocab_size)

    print(f"\nfp32 matmul peak: {peak / 1e9:.1f} GFLOP/s; the gpt run took {gpt_seconds:.0f} s of wall time, "
          "llama had the same")
    print(f"{'model':8} {'val loss':>9} {'steps':>6}")
    for name, (loss, steps) in rows.items():
        print(f"{name:8} {loss:9.4f} {steps:6d}")
    print(f"training tokens/s (medians of 5 alternating runs of 100 steps): plain loop {plain_rate:,.0f}, "
          f"gpt through the Trainer {gpt_rate:,.0f}; MFU of gpt {mfu:.2%}")
    print(f"generation of {GENERATED} tokens: cached {cached_rate:,.0f} tokens/s, "
          f"recomputed {recompute_rate:,.0f} tokens/s")
    gpt_loss, plain_loss, llama_loss = rows["gpt"][0], rows["plain"][0], rows["llama"][0]
    checks = {"val_loss <= plain + 0.02": gpt_loss <= plain_loss + 0.02, "val_loss <= 1.90": gpt_loss <= 1.90,
              "speed_vs_plain_gpt >= 1.0": gpt_rate >= plain_rate, "llama below gpt": llama_loss < gpt_loss}
    print("targets: " + ", ".join(f"{name} {'held' if ok else 'MISSED'}" for name, ok in checks.items()))
    print(f"RESULT val_loss={gpt_loss:.4f} speed_vs_plain_gpt={gpt_rate / plain_rate:.3f} mfu={mfu:.4f} "
          f"llama_val_loss={llama_loss:.4f} cache_speedup={cached_rate / recompute_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
