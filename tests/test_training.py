import math

import pytest
import torch

from seqlab.checkpoint import load_checkpoint
from seqlab.errors import ConfigError, TrainingError
from seqlab.contracts import CausalLM
from seqlab.training import TrainConfig, Trainer, fit, learning_rate

from helpers import tiny_lstm, tiny_task, weights


def config(**overrides) -> TrainConfig:
    defaults = dict(steps=20, batch_size=8, lr=3e-3, warmup_steps=2, eval_every=10, eval_batches=2,
                    progress=False, device="cpu")
    return TrainConfig(**{**defaults, **overrides})


@pytest.fixture(scope="module")
def task():
    return tiny_task()


def test_learning_rate_warms_up_linearly_then_decays_by_cosine():
    cfg = TrainConfig(steps=110, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert [learning_rate(cfg, s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert learning_rate(cfg, 10) == pytest.approx(1.0)
    assert learning_rate(cfg, 60) == pytest.approx(0.1 + 0.9 * 0.5)       # half way: cos(pi/2) = 0
    assert learning_rate(cfg, 110) == pytest.approx(0.1)
    decay = [learning_rate(cfg, s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert learning_rate(cfg, 20, progress=1.0) == pytest.approx(0.1)      # a spent time budget


def test_training_lowers_the_validation_loss(task):
    model = tiny_lstm(task)
    before = task.evaluate(model, "valid", max_batches=4)["loss"]
    result = Trainer(model, task, config(steps=80, eval_every=40)).fit()
    after = task.evaluate(model, "valid", max_batches=4)["loss"]
    assert after < before - 0.5, (before, after)
    assert [row["step"] for row in result.history] == [40, 80]
    assert result.tokens_seen == 80 * 8 * task.context
    assert result.stopped_by == "steps"


def test_gradient_accumulation_equals_one_large_batch(task):
    plain, accumulated = tiny_lstm(task), tiny_lstm(task)
    Trainer(plain, task, config(steps=3, batch_size=8, grad_accum=1)).fit()
    Trainer(accumulated, task, config(steps=3, batch_size=8, grad_accum=4)).fit()
    for name, tensor in weights(plain).items():
        torch.testing.assert_close(weights(accumulated)[name], tensor, rtol=1e-5, atol=1e-6)


def test_batch_size_must_split_evenly_into_micro_batches(task):
    with pytest.raises(ConfigError, match="multiple"):
        Trainer(tiny_lstm(task), task, config(batch_size=6, grad_accum=4))


def test_pre_clip_norm_is_logged_and_gradients_are_clipped(task):
    model = tiny_lstm(task)
    reference = tiny_lstm(task)
    batch = task.train_batch(8, torch.Generator().manual_seed(0))       # the trainer's first batch
    task.loss(reference, batch).backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in reference.parameters()]))

    trainer = Trainer(model, task, config(steps=1, eval_every=1, grad_clip=0.05))
    seen = []
    trainer.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: seen.append(
            torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()))
    result = trainer.fit()
    assert result.history[0]["grad_norm"] == pytest.approx(expected.item(), rel=1e-5)
    assert expected > 0.05 and seen == [pytest.approx(0.05, rel=1e-4)]
    assert result.clipped_steps == 1


@pytest.mark.parametrize("tbptt", [False, True])
def test_resume_continues_exactly(task, tmp_path, tbptt):
    # Dropout on: resuming must restore the RNG that drives it, not only weights and optimizer;
    # with truncated BPTT it must also restore the state carried between windows.
    straight = tiny_lstm(task, dropout=0.2)
    Trainer(straight, task, config(steps=20, eval_every=5, tbptt=tbptt)).fit()

    first = tiny_lstm(task, dropout=0.2)
    result = Trainer(first, task, config(steps=20, eval_every=5, tbptt=tbptt), tmp_path / "run").fit(stop_at=10)
    assert result.steps == 10 and result.stopped_by == "stop_at"
    resumed = tiny_lstm(task, dropout=0.2, seed=123)                   # different initial weights
    result = Trainer(resumed, task, config(steps=20, eval_every=5, tbptt=tbptt), tmp_path / "run").fit(resume=True)
    assert result.steps == 20
    assert [row["step"] for row in result.history] == [5, 10, 15, 20]
    for name, tensor in weights(straight).items():
        assert torch.equal(weights(resumed)[name], tensor), name


class NaNAfter:
    """Wraps a task so that its training loss becomes NaN from step ``bad_step`` on."""

    def __init__(self, task, bad_step):
        self.task, self.bad_step, self.calls = task, bad_step, 0

    def __getattr__(self, name):
        return getattr(self.task, name)

    def loss(self, model, batch):
        self.calls += 1
        loss = self.task.loss(model, batch)
        return loss * math.nan if self.calls >= self.bad_step else loss


def test_nan_loss_stops_with_error_and_keeps_last_good_checkpoint(task, tmp_path):
    model = tiny_lstm(task)
    trainer = Trainer(model, NaNAfter(task, bad_step=6), config(steps=20, eval_every=4), tmp_path / "run")
    with pytest.raises(TrainingError, match="step 6"):
        trainer.fit()
    saved = load_checkpoint(tmp_path / "run")
    assert saved.info["step"] == 4
    reference = tiny_lstm(task)
    Trainer(reference, task, config(steps=20)).fit(stop_at=4)
    for name, tensor in weights(reference).items():
        assert torch.equal(saved.model.state_dict()[name], tensor), name


def test_budget_stops_training(task):
    result = Trainer(tiny_lstm(task), task, config(steps=10**6, budget_seconds=0.5)).fit()
    assert result.stopped_by == "budget"
    assert 0.5 <= result.train_seconds < 5.0
    assert result.history and result.history[-1]["step"] == result.steps


def test_budget_must_be_positive():
    with pytest.raises(ConfigError, match="budget"):
        TrainConfig(budget_seconds=0)


class WorseningValidation:
    """A task whose validation loss gets worse at every evaluation after the first."""

    def __init__(self, task):
        self.task, self.evaluations = task, 0

    def __getattr__(self, name):
        return getattr(self.task, name)

    def evaluate(self, model, split, **options):
        self.evaluations += 1
        return {"loss": float(self.evaluations), "bpc": float(self.evaluations)}


def test_early_stopping_after_patience_evaluations(task):
    wrapped = WorseningValidation(task)
    result = Trainer(tiny_lstm(task), wrapped, config(steps=100, eval_every=2, patience=3)).fit()
    assert result.stopped_by == "patience"
    assert result.steps == 8 and wrapped.evaluations == 4
    assert result.best_valid_loss == 1.0


class RecordingDtype:
    def __init__(self, task):
        self.task, self.dtypes = task, []

    def __getattr__(self, name):
        return getattr(self.task, name)

    def loss(self, model, batch):
        self.dtypes.append(model(batch[0]).dtype)
        return self.task.loss(model, batch)


def test_bf16_autocast_runs_the_forward_in_bfloat16(task):
    recording = RecordingDtype(task)
    model = tiny_lstm(task)
    result = Trainer(model, recording, config(steps=30, precision="bf16", eval_every=30)).fit()
    assert set(recording.dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert result.history[-1]["valid_loss"] < math.log(task.vocab_size)


def test_time_based_evaluation(task):
    result = Trainer(tiny_lstm(task), task, config(steps=5, eval_every=1000, eval_every_seconds=1e-9)).fit()
    assert [row["step"] for row in result.history] == [1, 2, 3, 4, 5]


class CountingUnigram(CausalLM):
    """A model with a closed-form fit: add-one unigram frequencies of the training block."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size
        self.log_probs = torch.nn.Parameter(torch.full((vocab_size,), -math.log(vocab_size)))

    def fit(self, task):
        counts = torch.bincount(task.splits["train"].ids, minlength=self.vocab_size) + 1.0
        self.log_probs.data = (counts / counts.sum()).log()
        return self

    def forward(self, tokens):
        return self.log_probs.expand(*tokens.shape, -1)

    def init_state(self, batch_size):
        return None

    def step(self, token, state):
        return self.log_probs.expand(len(token), -1), state


def test_fit_dispatches_to_a_models_own_fit(task):
    model = CountingUnigram(task.vocab_size)
    result = fit(model, task)
    valid = task.splits["valid"].ids[1:]
    expected = -model.log_probs[valid].mean().item()
    assert result.history[0]["valid_loss"] == pytest.approx(expected, rel=1e-5)
    assert expected < math.log(task.vocab_size) - 0.5
    assert result.steps == 0 and result.tokens_seen == task.train_tokens


def test_fit_trains_a_neural_model_with_the_trainer(task):
    model = tiny_lstm(task)
    result = fit(model, task, steps=3, batch_size=4, eval_every=3, progress=False, device="cpu")
    assert result.steps == 3 and result.tokens_seen == 3 * 4 * task.context
    with pytest.raises(ConfigError, match="unknown key 'stepz'"):
        fit(model, task, stepz=3)


def test_progress_bar_shows_loss_and_tokens_per_second(task, capfd):
    Trainer(tiny_lstm(task), task, config(steps=10, progress=True)).fit()
    err = capfd.readouterr().err
    assert "loss=" in err and "tok_s=" in err and "10/10" in err


def test_stream_windows_continue_each_other(task):
    first_inputs, first_targets = task.stream_batch(4, 0)
    second_inputs, _ = task.stream_batch(4, 1)
    assert torch.equal(second_inputs[:, 0], first_targets[:, -1])
    ids = task.splits["train"].ids
    windows = task.stream_windows(4)
    assert torch.equal(first_inputs[1], ids[windows * task.context: windows * task.context + task.context])
    assert torch.equal(task.stream_batch(4, windows)[0], first_inputs)          # wraps around


def stream_training_by_hand(task, steps: int, carry: bool):
    """AdamW on consecutive stream windows, carrying the detached state or starting afresh."""
    model = tiny_lstm(task)
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.01},
         {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}],
        lr=3e-3, betas=(0.9, 0.99))
    state, cfg = None, config(steps=steps, warmup_steps=0)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        loss, state = task.stream_loss(model, task.stream_batch(4, step), state if carry else None)
        loss.backward()
        state = tuple(s.detach() for s in state)
        optimizer.step()
        optimizer.zero_grad()
    return weights(model)


def test_truncated_bptt_carries_the_detached_state(task):
    model = tiny_lstm(task)
    Trainer(model, task, config(steps=3, batch_size=4, tbptt=True, grad_clip=None, warmup_steps=0)).fit()
    carried, fresh = stream_training_by_hand(task, 3, carry=True), stream_training_by_hand(task, 3, carry=False)
    for name, tensor in carried.items():
        torch.testing.assert_close(weights(model)[name], tensor, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(fresh["head.bias"], carried["head.bias"])


def test_gradients_clipped_by_value(task):
    model = tiny_lstm(task)
    trainer = Trainer(model, task, config(steps=2, grad_clip=None, grad_clip_value=1e-4))
    largest = []
    trainer.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: largest.append(max(p.grad.abs().max().item() for p in model.parameters())))
    result = trainer.fit()
    assert largest and max(largest) <= 1e-4 + 1e-12
    assert result.history[-1]["grad_norm"] > 1e-3                   # the logged norm is pre-clip
