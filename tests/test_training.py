import json
import math

import pytest
import torch

from seqlab import registry
from seqlab.budget import Budget
from seqlab.checkpoint import load_checkpoint
from seqlab.errors import CheckpointError, ConfigError, TrainingError
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
    with pytest.raises(TrainingError, match="step 6.*the last good checkpoint, step 4, is kept"):
        trainer.fit()
    saved = load_checkpoint(tmp_path / "run", which="last")
    assert saved.info["step"] == 4
    reference = tiny_lstm(task)
    Trainer(reference, task, config(steps=20)).fit(stop_at=4)
    for name, tensor in weights(reference).items():
        assert torch.equal(saved.model.state_dict()[name], tensor), name


class FakeClock:
    """A clock that moves only when the task says work was done: deterministic budgets."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class TimedTask:
    """A task whose training batches take ``step`` seconds and evaluations ``evaluation``."""

    def __init__(self, task, clock, step=1.0, evaluation=0.5):
        self.task, self.clock, self.step, self.evaluation = task, clock, step, evaluation

    def __getattr__(self, name):
        return getattr(self.task, name)

    def loss(self, model, batch):
        self.clock.now += self.step
        return self.task.loss(model, batch)

    def evaluate(self, model, split, **options):
        self.clock.now += self.evaluation
        return self.task.evaluate(model, split, **options)


@pytest.mark.parametrize("reserve", [0, 1])
def test_the_budget_bounds_the_wall_time_evaluations_included(task, reserve):
    clock = FakeClock()
    budget = Budget(10.0, clock=clock)
    trainer = Trainer(tiny_lstm(task), TimedTask(task, clock), config(steps=10**6, eval_every=3, budget_seconds=10.0),
                      budget=budget, reserve_evaluations=reserve)
    result = trainer.fit()
    assert result.stopped_by == "budget"
    assert result.history and result.history[-1]["step"] == result.steps      # a final evaluation
    # It stops while the measured closing evaluation (0.5 s), plus the one reserved, still fits.
    assert clock.now + 0.5 * reserve <= 10.0 + 1.0, clock.now
    assert clock.now + 0.5 * reserve > 10.0 - 1.0 - 0.5 * (1 + reserve), clock.now


@pytest.mark.parametrize("step, evaluation, eval_every", [(1.0, 3.0, 10**6), (4.0, 0.5, 10**6), (0.25, 1.0, 7)])
def test_the_budget_holds_however_long_steps_and_evaluations_take(task, step, evaluation, eval_every):
    # Before, the closing evaluation was unknown until one had run, and the next step was not
    # counted: a 10 s budget ended at 13 s with 3 s evaluations and none before the end.
    clock = FakeClock()
    Trainer(tiny_lstm(task), TimedTask(task, clock, step=step, evaluation=evaluation),
            config(steps=10**6, eval_every=eval_every, budget_seconds=10.0), budget=Budget(10.0, clock=clock)).fit()
    assert clock.now <= 10.0, clock.now


def test_the_learning_rate_anneals_over_a_time_budget(task):
    clock = FakeClock()
    result = Trainer(tiny_lstm(task), TimedTask(task, clock, evaluation=0.0),
                     config(steps=10**6, warmup_steps=0, eval_every=1, budget_seconds=20.0),
                     budget=Budget(20.0, clock=clock)).fit()
    rates = [row["lr"] for row in result.history]
    assert rates[0] == pytest.approx(3e-3, rel=0.05) and rates[-1] < 0.5e-3
    assert all(a >= b for a, b in zip(rates, rates[1:]))


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


def test_fit_dispatches_to_a_models_own_fit(task, tmp_path):
    model = registry.build("markov", task, order=2)
    result = fit(model, task, tmp_path / "run")
    assert result.stopped_by == "fit" and result.steps == 0 and result.tokens_seen == task.train_tokens
    assert result.history[0]["valid_loss"] == pytest.approx(task.evaluate(model, "valid")["loss"], rel=1e-6)
    assert load_checkpoint(tmp_path / "run").info["trains"] == "fit"
    with pytest.raises(ConfigError, match="fits itself and takes no training option 'lr'"):
        fit(registry.build("markov", task), task, lr=0.1)


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


class ValidationLosses:
    """A task whose successive validation losses are the given numbers."""

    def __init__(self, task, losses):
        self.task, self.losses = task, list(losses)

    def __getattr__(self, name):
        return getattr(self.task, name)

    def evaluate(self, model, split, **options):
        metrics = self.task.evaluate(model, split, **options)
        return {**metrics, "loss": self.losses.pop(0)}


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_validation_loss_that_is_not_finite_is_never_checkpointed(task, tmp_path, bad):
    # --lr 1e6 used to stop "keeping the last good checkpoint" whose validation loss was NaN.
    wrapped = ValidationLosses(task, [2.0, 1.5, bad])
    trainer = Trainer(tiny_lstm(task), wrapped, config(steps=20, eval_every=2), tmp_path / "run")
    with pytest.raises(TrainingError, match="validation loss became .* at step 6.*checkpoint, step 4, is kept"):
        trainer.fit()
    for which in ("best", "last"):
        assert load_checkpoint(tmp_path / "run", which=which).info["step"] == 4


def test_weights_that_are_not_finite_are_never_checkpointed(task, tmp_path):
    class PoisonAt4:
        def __init__(self, task):
            self.task = task

        def __getattr__(self, name):
            return getattr(self.task, name)

        def evaluate(self, model, split, **options):
            if trainer.step == 4:
                with torch.no_grad():
                    next(model.parameters())[0, 0] = math.inf
            return self.task.evaluate(model, split, **options)

    trainer = Trainer(tiny_lstm(task), PoisonAt4(task), config(steps=20, eval_every=2), tmp_path / "run")
    with pytest.raises(TrainingError, match="step 4.*step 2, is kept"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "run").info["step"] == 2


def test_the_best_checkpoint_is_kept_beside_the_last(task, tmp_path):
    wrapped = ValidationLosses(task, [3.0, 2.0, 2.5, 2.7, 2.9])
    result = Trainer(tiny_lstm(task), wrapped, config(steps=100, eval_every=2, patience=3), tmp_path / "run").fit()
    assert result.stopped_by == "patience" and result.steps == 10
    assert load_checkpoint(tmp_path / "run").info["step"] == 4              # best: eval and predict read it
    assert load_checkpoint(tmp_path / "run", which="last").info["step"] == 10
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "valid_loss" in row] == [2, 4, 6, 8, 10]
    assert [row["step"] for row in rows if "valid_loss" not in row] == [10]   # log_every 10


def test_resume_restores_the_log_up_to_the_checkpoint(task, tmp_path):
    Trainer(tiny_lstm(task), task, config(steps=20, eval_every=5, log_every=1), tmp_path / "run").fit(stop_at=10)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as log:
        log.write(json.dumps({"step": 11, "train_loss": 9.9}) + "\n")        # logged after the checkpoint
    Trainer(tiny_lstm(task), task, config(steps=20, eval_every=5, log_every=1), tmp_path / "run").fit(resume=True)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s == 11] == [11] and steps == sorted(steps) and steps[-1] == 20


def test_resume_refuses_a_schedule_shorter_than_the_steps_done(task, tmp_path):
    Trainer(tiny_lstm(task), task, config(steps=20, eval_every=5), tmp_path / "run").fit(stop_at=10)
    with pytest.raises(ConfigError, match="done 10 steps, more than its schedule's 5"):
        Trainer(tiny_lstm(task), task, config(steps=5, eval_every=5), tmp_path / "run").fit(resume=True)


def test_a_training_state_from_another_run_or_with_missing_keys_is_refused(task, tmp_path):
    Trainer(tiny_lstm(task), task, config(steps=4, eval_every=2), tmp_path / "a").fit()
    other = registry.build("lstm", task, d_model=16, n_layers=1)
    Trainer(other, task, config(steps=4, eval_every=4), tmp_path / "b").fit()
    last_a = tmp_path / "a" / json.loads((tmp_path / "a" / "run.json").read_text())["last"]
    last_b = tmp_path / "b" / json.loads((tmp_path / "b" / "run.json").read_text())["last"]
    (last_a / "trainer.pt").write_bytes((last_b / "trainer.pt").read_bytes())
    with pytest.raises(CheckpointError, match="belongs to another model|parameters but the model has"):
        load_checkpoint(tmp_path / "a", which="last", with_trainer_state=True)
    state = torch.load(last_b / "trainer.pt", weights_only=True)
    state["step"] = 3
    torch.save(state, last_b / "trainer.pt")
    with pytest.raises(CheckpointError, match="at step 3 but its config.json at step 4"):
        load_checkpoint(tmp_path / "b", which="last", with_trainer_state=True)
    del state["sampler_rng"]
    torch.save(state, last_b / "trainer.pt")
    with pytest.raises(CheckpointError, match="lacks 'sampler_rng'"):
        load_checkpoint(tmp_path / "b", which="last", with_trainer_state=True)


def test_tbptt_needs_a_task_with_streams(task):
    class NoStreams:
        name = "classify"

        def __getattr__(self, name):
            if name.startswith("stream"):
                raise AttributeError(name)
            return getattr(task, name)

    with pytest.raises(ConfigError, match="--tbptt needs a task with contiguous streams"):
        Trainer(tiny_lstm(task), NoStreams(), config(tbptt=True))


@pytest.mark.parametrize("values, message", [
    ({"lr": math.nan}, "lr must be a finite number"),
    ({"grad_clip": math.nan}, "grad_clip must be a finite number"),
    ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
    ({"weight_decay": math.nan}, "weight_decay must be a finite number"),
    ({"budget_seconds": math.inf}, "budget_seconds must be a finite number"),
    ({"betas": (0.9, 1.5)}, "betas must lie in"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"steps": 0}, "steps must be >= 1"),
])
def test_train_config_rejects_values_that_make_no_sense(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_it_is_a_clear_error(task):
    with pytest.raises(ConfigError, match="no CUDA device"):
        Trainer(tiny_lstm(task), task, config(device="cuda"))


def test_the_optimizer_is_torch_s_fused_adamw(task):
    # The fused kernel is an implementation, not another optimiser: the hand loop with the default
    # AdamW reaches the Trainer's weights (test_truncated_bptt_carries_the_detached_state).
    assert Trainer(tiny_lstm(task), task, config(steps=1, batch_size=4)).optimizer.defaults["fused"] is True
