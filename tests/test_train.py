"""The training loop: tracking a PyTorch twin, exact resume, clipping, stopping."""

import math
import os
import signal

import numpy as np
import pytest

from rnnkit.checkpoint import load_checkpoint
from rnnkit.losses import cross_entropy
from rnnkit.models import LanguageModel
from rnnkit.train import (
    CHECKPOINT_NAME,
    LinesLMTask,
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


def test_bad_config_is_reported():
    model, task = make_lines_run()
    with pytest.raises(ValueError, match="optimizer must be one of"):
        train(model, task, TrainConfig(steps=1, optimizer="lbfgs", progress="none"))
    with pytest.raises(ValueError, match="progress must be"):
        train(model, task, TrainConfig(steps=1, progress="fancy"))


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
    for name, value in snapshots[2].items():  # the file holds the best weights, not the last
        np.testing.assert_array_equal(arrays["model." + name], value)
    assert meta["history"]["stopped_early"]
    again, again_task = make_lines_run(dropout=0.0)
    history = train(again, again_task, config, tmp_path, resume=True)
    assert len(history.train_loss) == 10  # nothing trained after the early stop
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)[1]["step"] == meta["step"]


def test_resuming_an_inconsistent_checkpoint_says_so(tmp_path):
    from rnnkit.checkpoint import CheckpointError, save_checkpoint

    model, task = make_lines_run()
    train(model, task, TrainConfig(steps=2, progress="none"), tmp_path)
    arrays, meta = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    del meta["history"]
    save_checkpoint(tmp_path / CHECKPOINT_NAME, arrays, meta)
    with pytest.raises(CheckpointError, match="cannot be resumed.*history"):
        train(model, task, TrainConfig(steps=4, progress="none"), tmp_path, resume=True)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("steps", 0, "steps must be >= 1"),
        ("eval_every", -1, "eval_every must be >= 0"),
        ("patience", -2, "patience must be >= 0"),
        ("clip_mode", "l1", "clip_mode must be"),
        ("lr", 0.0, "lr must be > 0"),
    ],
)
def test_train_config_checks_its_fields(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})
