"""The training loop: tracking a PyTorch twin, exact resume, clipping, stopping."""

import io
import json
import math
import os
import signal
import time

import numpy as np
import pytest

from rnnkit import blas
from rnnkit.checkpoint import load_checkpoint
from rnnkit.losses import cross_entropy
from rnnkit.models import LanguageModel
from rnnkit.train import (
    CHECKPOINT_NAME,
    ConfigError,
    Interrupted,
    LinesLMTask,
    Progress,
    StreamLMTask,
    TrainConfig,
    TrainingError,
    train,
)

V = 12


def corpus(n=2000, seed=0):
    """A stream with structure to learn: a noisy counter modulo V."""
    rng = np.random.default_rng(seed)
    ids = np.cumsum(rng.integers(1, 3, n)) % V
    return ids.astype(np.int64)


def lines(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(1, V, rng.integers(2, 9))) for _ in range(n)]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_lm_training_tracks_pytorch_twin(cell):
    """50 steps of truncated BPTT with Adam and clipping: every loss equal to 1e-8 relative."""
    torch = pytest.importorskip("torch")
    H, N, T = 16, 4, 10
    model = LanguageModel(V, H, num_layers=2, cell=cell, rng=0, dtype=np.float64)

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(V, H)
            self.rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](H, H, 2)
            self.head = torch.nn.Linear(H, V)

        def forward(self, x, state):
            out, state = self.rnn(self.embedding(x), state)
            return self.head(out), state

    twin = Twin().double()
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    ids = corpus()
    task = StreamLMTask(ids, None, batch_size=N, seq_len=T)
    config = TrainConfig(steps=50, optimizer="adam", lr=0.01, clip=0.5, progress="none")
    history = train(model, task, config)

    opt = torch.optim.Adam(twin.parameters(), lr=0.01)
    stream = StreamLMTask(ids, None, batch_size=N, seq_len=T).batches
    state, twin_losses = None, []
    for _ in range(50):
        x, y, new_epoch = stream.next()
        if new_epoch:
            state = None
        logits, state = twin(torch.from_numpy(x), state)
        state = tuple(s.detach() for s in state) if cell == "lstm" else state.detach()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, V), torch.from_numpy(y).reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5)
        opt.step()
        twin_losses.append(loss.item())
    np.testing.assert_allclose(history.train_loss, twin_losses, rtol=1e-8, atol=0)
    assert history.train_loss[-1] < 0.8 * history.train_loss[0]  # it learned something
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(value, dict(twin.state_dict())[name].numpy(), atol=1e-8)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_initial_loss_is_near_ln_V(cell):
    vocab = 60
    model = LanguageModel(vocab, 32, cell=cell, rng=1)
    ids = np.random.default_rng(0).integers(0, vocab, (20, 16))
    logits, _, _ = model.forward(ids[:-1])
    loss, _ = cross_entropy(logits, ids[1:])
    assert abs(loss - math.log(vocab)) < 0.05 * math.log(vocab)


def make_stream_run(dropout=0.3):
    model = LanguageModel(V, 12, num_layers=2, cell="lstm", dropout=dropout, rng=5)
    return model, StreamLMTask(corpus(600), corpus(200, seed=1), batch_size=3, seq_len=7)


def make_lines_run(dropout=0.3):
    model = LanguageModel(V, 12, cell="gru", dropout=dropout, rng=5)
    task = LinesLMTask(lines(40), lines(10, seed=1), 4, eos_id=0, rng=np.random.default_rng(3))
    return model, task


class Stop(Exception):
    pass


@pytest.mark.parametrize("make_run", [make_stream_run, make_lines_run])
@pytest.mark.parametrize("stop_at", [3, 10])
def test_resume_is_bit_identical(tmp_path, make_run, stop_at):
    config = TrainConfig(
        steps=24, lr=0.01, eval_every=5, checkpoint_every=1, seed=7, progress="none"
    )
    model, task = make_run()
    history = train(model, task, config, tmp_path / "full")

    def stop(step):
        if step == stop_at:
            raise Stop

    model_b, task_b = make_run()
    with pytest.raises(Stop):
        train(model_b, task_b, config, tmp_path / "part", on_checkpoint=stop)
    model_c, task_c = make_run()  # a fresh process: new objects, nothing carried over
    model_c.load_state_dict({k: v * 0 + 1 for k, v in model_c.state_dict().items()})
    resumed = train(model_c, task_c, config, tmp_path / "part", resume=True)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(model_c.state_dict()[name], value, err_msg=name)
    assert resumed.train_loss == history.train_loss
    assert resumed.val_loss == history.val_loss


def test_same_seed_same_run_and_different_seed_differs():
    def run(seed):
        model, task = make_lines_run()
        train(model, task, TrainConfig(steps=6, seed=seed, progress="none"))
        return model.state_dict()

    a, b, c = run(1), run(1), run(2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)  # dropout masks differ


class PoisonTask:
    """Wraps a task and corrupts one gradient (or the loss) at a given step."""

    def __init__(self, task, at_step, what):
        self.task, self.at_step, self.what, self.steps = task, at_step, what, 0

    def train_step(self, model):
        loss = self.task.train_step(model)
        self.steps += 1
        if self.steps == self.at_step:
            if self.what == "loss":
                return float("nan")
            model.rnn.grads["weight_hh_l0"][0, 0] = np.inf if self.what == "inf" else np.nan
        return loss

    def evaluate(self, model):
        return self.task.evaluate(model)

    def state_dict(self):
        return self.task.state_dict()

    def load_state_dict(self, arrays, meta):
        self.task.load_state_dict(arrays, meta)


@pytest.mark.parametrize("what", ["inf", "nan", "loss"])
@pytest.mark.parametrize("clip_mode", ["norm", "value"])
def test_non_finite_gradient_or_loss_changes_nothing_and_is_reported(tmp_path, what, clip_mode):
    model, task = make_stream_run(dropout=0.0)
    config = TrainConfig(
        steps=10, checkpoint_every=2, clip=1.0, clip_mode=clip_mode, progress="none"
    )
    saved = {}

    def remember(step):
        saved[step] = model.state_dict()

    poisoned = PoisonTask(task, at_step=6, what=what)
    with pytest.raises(TrainingError, match="gradient became non-finite|loss became nan"):
        train(model, poisoned, config, tmp_path, on_checkpoint=remember)
    after_step_5 = model.state_dict()
    assert all(np.isfinite(v).all() for v in after_step_5.values())
    arrays, meta = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert meta["step"] == 4  # the last good checkpoint is kept
    for name, value in saved[4].items():
        np.testing.assert_array_equal(arrays["model." + name], value)


def test_early_stopping_restores_best_weights():
    model, task = make_lines_run(dropout=0.0)
    scores = iter([3.0, 2.0, 2.5, 2.6, 2.7, 1.0])
    snapshots = {}

    def evaluate(m):
        snapshots[len(snapshots) + 1] = m.state_dict()
        return next(scores)

    task.evaluate = evaluate
    config = TrainConfig(steps=100, eval_every=2, patience=3, progress="none")
    history = train(model, task, config)
    assert history.stopped_early and history.best_step == 4 and history.best_val == 2.0
    assert len(history.train_loss) == 10  # stopped after three evaluations without progress
    for name, value in snapshots[2].items():
        np.testing.assert_array_equal(model.state_dict()[name], value)


def test_ctrl_c_saves_a_whole_step_then_stops(tmp_path):
    model, task = make_stream_run()

    class Interrupting:
        def __init__(self):
            self.steps = 0

        def train_step(self, m):
            self.steps += 1
            if self.steps == 4:
                os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of step 4
            return task.train_step(m)

        def evaluate(self, m):
            return task.evaluate(m)

        def state_dict(self):
            return task.state_dict()

        def load_state_dict(self, arrays, meta):
            task.load_state_dict(arrays, meta)

    config = TrainConfig(steps=12, progress="none", seed=3)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(model, Interrupting(), config, tmp_path)
    arrays, meta = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert meta["step"] == 4
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(arrays["model." + name], value)
    assert signal.getsignal(signal.SIGINT) is handler  # handler restored
    full_model, full_task = make_stream_run()
    train(full_model, full_task, config)
    resumed_model, resumed_task = make_stream_run()
    train(resumed_model, resumed_task, config, tmp_path, resume=True)
    for name, value in full_model.state_dict().items():
        np.testing.assert_array_equal(resumed_model.state_dict()[name], value)


def test_early_stopped_run_saves_its_best_weights_and_resume_stops_there(tmp_path):
    model, task = make_lines_run(dropout=0.0)
    scores = iter([3.0, 2.0, 2.5, 2.6, 2.7])
    snapshots = {}

    def evaluate(m):
        snapshots[len(snapshots) + 1] = m.state_dict()
        return next(scores)

    task.evaluate = evaluate
    config = TrainConfig(steps=100, eval_every=2, patience=3, progress="none")
    train(model, task, config, tmp_path)
    arrays, meta = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    for name, value in snapshots[2].items():  # the file holds the best weights...
        np.testing.assert_array_equal(arrays["best." + name], value)
    for name, value in model.state_dict().items():  # (which the model ends with)
        np.testing.assert_array_equal(arrays["best." + name], value)
    assert not np.array_equal(arrays["model.head.weight"], arrays["best.head.weight"])
    assert meta["history"]["stopped_early"]  # ...and the last ones, to resume from
    again, again_task = make_lines_run(dropout=0.0)
    history = train(again, again_task, config, tmp_path, resume=True)
    assert len(history.train_loss) == 10  # nothing trained after the early stop
    for name, value in again.state_dict().items():
        np.testing.assert_array_equal(arrays["best." + name], value)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)[1]["step"] == meta["step"]


def test_resuming_an_inconsistent_checkpoint_says_so(tmp_path):
    from rnnkit.checkpoint import CheckpointError, save_checkpoint

    model, task = make_lines_run()
    train(model, task, TrainConfig(steps=2, progress="none"), tmp_path)
    arrays, meta = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    del meta["history"]
    save_checkpoint(tmp_path / CHECKPOINT_NAME, arrays, meta)
    with pytest.raises(CheckpointError, match="cannot be resumed: history must hold"):
        train(model, task, TrainConfig(steps=4, progress="none"), tmp_path, resume=True)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("steps", 0, "steps must be >= 1"),
        ("steps", 10**9, "steps must be <= 1,000,000"),
        ("steps", True, "steps must be a whole number"),
        ("steps", 5.0, "steps must be a whole number"),
        ("eval_every", -1, "eval_every must be >= 0"),
        ("patience", -2, "patience must be >= 0"),
        ("checkpoint_every", "10", "checkpoint_every must be a whole number"),
        ("clip_mode", "l1", "clip_mode must be"),
        ("lr", 0.0, "lr must be > 0"),
        ("lr", float("nan"), "lr must be > 0 and finite"),
        ("lr", float("inf"), "lr must be > 0 and finite"),
        ("lr", "0.1", "lr must be > 0"),
        ("clip", float("nan"), "clip must be >= 0 and finite"),  # nan once turned clipping off
        ("clip", -1.0, "clip must be >= 0"),
        ("optimizer", "lbfgs", "optimizer must be one of"),
        ("lr_schedule", "linear", "lr_schedule must be one of"),
        ("progress", "fancy", "progress must be one of"),
        ("seed", -1, "seed must be >= 0"),
        ("restore_best", 1, "restore_best must be True or False"),
    ],
)
def test_train_config_checks_its_fields(field, value, message):
    with pytest.raises(ConfigError, match=message) as info:
        TrainConfig(**{field: value})
    assert info.value.field == field and isinstance(info.value, ValueError)


def test_the_rate_shown_counts_only_this_runs_steps(monkeypatch):
    """A resumed run at step 90 of 100 that takes 10 s for its 10 steps shows 1 step/s (it
    used to count the 90 steps it did not take)."""
    clock = iter([100.0, 110.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    progress = Progress("line", 100, start=90, stream=out)
    progress.update(100, 1.5)
    assert out.getvalue() == "step 100/100 loss 1.5000 (1.0 steps/s)\n"


def test_a_bar_on_a_terminal_and_lines_otherwise():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    bar = Terminal()
    progress = Progress("auto", 4, stream=bar)
    for step in range(1, 5):
        progress.update(step, 2.0, 1.0 if step == 4 else None)
    progress.close()
    assert "4/4" in bar.getvalue() and "\r" in bar.getvalue() and "val 1.0000" in bar.getvalue()
    lines = io.StringIO()
    progress = Progress("auto", 40, stream=lines)
    for step in range(1, 41):
        progress.update(step, 2.0)
    assert "\r" not in lines.getvalue() and len(lines.getvalue().splitlines()) == 20


def test_sigterm_saves_a_whole_step_then_stops(tmp_path):
    """How schedulers stop a job: handled like Ctrl-C, a checkpoint first."""
    model, task = make_stream_run()
    calls = []

    def step(m):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return StreamLMTask.train_step(task, m)

    task.train_step = step
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as info:
        train(model, task, TrainConfig(steps=12, progress="none"), tmp_path)
    assert info.value.signum == signal.SIGTERM
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)[1]["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is handler


def test_the_best_weights_are_kept_and_the_last_saved_for_resume(tmp_path):
    model, task = make_lines_run(dropout=0.0)
    scores = iter([3.0, 1.0, 2.0, 2.5])
    snapshots = []

    def evaluate(m):
        snapshots.append(m.state_dict())
        return next(scores)

    task.evaluate = evaluate
    config = TrainConfig(steps=8, eval_every=2, restore_best=True, progress="none")
    history = train(model, task, config, tmp_path)
    assert (history.best_step, history.best_val, history.stopped_early) == (4, 1.0, False)
    arrays, _ = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, snapshots[1][name])  # returned: the best
        np.testing.assert_array_equal(arrays["best." + name], snapshots[1][name])
        np.testing.assert_array_equal(arrays["model." + name], snapshots[3][name])  # the last


def test_a_task_without_validation_data_is_not_validated(tmp_path):
    model = LanguageModel(V, 8, cell="gru", rng=5)
    task = LinesLMTask(lines(20), [], 4, eos_id=0, rng=np.random.default_rng(3))
    config = TrainConfig(steps=4, eval_every=1, patience=2, restore_best=True, progress="none")
    history = train(model, task, config, tmp_path)
    assert history.val_loss == [] and not history.stopped_early and len(history.train_loss) == 4
    arrays, _ = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert not any(k.startswith("best.") for k in arrays)


# ---------------------------------------------------------------- resuming checks


def damage(meta: dict, arrays: dict, case: str) -> None:
    """Change a checkpoint (rewritten with a valid checksum, as if crafted)."""
    if case.startswith("step="):
        meta["step"] = json.loads(case[5:])
    elif case == "optimizer_buffers_missing":
        for k in [k for k in arrays if k.startswith("optim.")]:
            del arrays[k]
    elif case == "optimizer_step_negative":
        meta["optimizer"]["step"] = -1
    elif case == "stream_position_missing":
        del meta["task"]["batches"]
    elif case == "stream_index_past_an_epoch":
        meta["task"]["batches"]["index"] = 10**6
    elif case == "carried_state_missing":
        for k in [k for k in arrays if k.startswith("task.")]:
            del arrays[k]
    elif case == "carried_state_misshapen":
        arrays["task.carry.0"] = np.zeros((2, 3, 5), np.float32)
        arrays["task.carry.1"] = np.zeros((2, 3, 5), np.float32)
    elif case == "stopped_early_without_patience":
        meta["history"]["stopped_early"] = True
    elif case == "history_too_short":
        meta["history"]["train_loss"] = meta["history"]["train_loss"][:-1]
    elif case == "config_lr_text":
        meta["config"]["lr"] = "fast"
    elif case == "generators_missing":
        meta["generators"] = []
    elif case == "weights_int32":
        arrays["model.head.bias"] = arrays["model.head.bias"].view(np.int32)
    else:
        raise AssertionError(case)


RESUME_DAMAGE = {
    "step=-1": "step must be a whole number in",
    "step=0": "step must be a whole number in",
    "step=true": "step must be a whole number in",
    "step=1000000000": "step must be a whole number in",
    "optimizer_buffers_missing": "does not hold the buffers it should",
    "optimizer_step_negative": "optimiser step must be a whole number >= 0",
    "stream_position_missing": "task state",
    "stream_index_past_an_epoch": "past the",
    "carried_state_missing": "carried state is missing",
    "carried_state_misshapen": "carried state is",
    "stopped_early_without_patience": "stopped early, which its patience does not allow",
    "history_too_short": "one training loss for each",
    "config_lr_text": "lr must be > 0",
    "generators_missing": "random generators",
    "weights_int32": "head.bias is int32",
}


@pytest.mark.parametrize("case", list(RESUME_DAMAGE))
def test_resume_refuses_a_state_the_run_could_not_have_reached(tmp_path, case):
    from rnnkit.checkpoint import CheckpointError, save_checkpoint

    config = TrainConfig(steps=6, eval_every=2, progress="none")
    model, task = make_stream_run()
    train(model, task, TrainConfig(steps=3, eval_every=2, progress="none"), tmp_path)
    path = tmp_path / CHECKPOINT_NAME
    arrays, meta = load_checkpoint(path)
    damage(meta, arrays, case)
    save_checkpoint(path, arrays, meta)
    before = path.read_bytes()
    model, task = make_stream_run()
    with pytest.raises(CheckpointError, match=RESUME_DAMAGE[case]):
        train(model, task, config, tmp_path, resume=True)
    assert path.read_bytes() == before  # a failed resume never rewrites the file


def test_the_loop_holds_numpys_blas_to_one_thread_and_gives_it_back():
    """Everything a step runs outside the layers (the gradient norm's dot products, the head)
    would otherwise leave OpenBLAS's worker spinning on the core the next step's threads need:
    measured, the language model's LSTM step took 1.7x as long."""
    model, task = make_stream_run()
    seen, real_step, before = [], task.train_step, blas.threads()

    def step(m):
        seen.append(blas.threads())
        return real_step(m)

    task.train_step = step
    blas.set_threads(2)
    try:
        train(model, task, TrainConfig(steps=3, progress="none"))
        assert seen == [1, 1, 1]
        assert blas.threads() == 2
    finally:
        blas.set_threads(before)
