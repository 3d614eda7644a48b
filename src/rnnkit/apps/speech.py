"""Speech recognition, Tx != Ty: spoken digit strings in, the digits out, with CTC.

Data: strings of 3 to 7 digits ("four one one seven") spoken by Debian's ``espeak-ng`` in many
voices: eight English accents (American, British, Scottish, Caribbean, ...) times voice
variants (male m1-m8, female f1-f5, the Klatt voices), each at a drawn speed (120-200 words a
minute) and pitch (30-70), with white noise added (15-30 dB signal-to-noise). The test set is
spoken only by voice variants never heard in training. ``espeak-ng`` is a program, not a data
set: ``rnnkit data get speech`` checks that it is installed and says how to install it.

Features: log-mel energies computed from the waveform in NumPy (23 ms Hann windows every
11.6 ms, 40 mel bands up to 8 kHz), normalised per utterance (mean and variance of each band),
with three neighbouring frames stacked into one step (35 ms a step).

The model: a two-layer bidirectional GRU reads the steps and a linear head gives each step a
distribution over the ten digits and the CTC blank; it is trained with the CTC loss
(:func:`rnnkit.losses.ctc_loss`), which needs no alignment of digits to frames, and decoded
greedily (best path) and by prefix beam search. The baseline: the same CTC training of a
linear classifier of each step with its four neighbours on either side (nine steps, 315 ms of
context), without any recurrence. Scores on the unseen voices: the digit error rate (edit
distance over reference length) and the share of strings recognised exactly.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..ctc import ctc_beam_decode, ctc_greedy_decode
from ..layers import Linear
from ..losses import ctc_loss
from ..models import make_recurrent
from ..module import Module, predicting
from ..train import BatchTask
from .common import (
    AppParser,
    TrainingFlags,
    add_model_flags,
    add_split_flags,
    entry_points,
    fit,
    nonnegative_int,
    percent,
    positive_int,
    print_scores,
)
from .datasets import DataError
from .metrics import error_rate, exact_match

SUMMARY = "speech recognition (Tx != Ty): spoken digit strings, bidirectional GRU with CTC"
APP = "speech"
PROG = f"rnnkit app {APP}"
INSTALL = "install it with `sudo apt-get install espeak-ng` (Debian, Ubuntu)"
DIGITS = "zero one two three four five six seven eight nine".split()
BLANK = 0  # CTC blank; digit d is class d + 1
ACCENTS = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
    "en-029", "en-us-nyc",
)  # fmt: skip
TRAIN_VARIANTS = ("m1", "m2", "m4", "m5", "m6", "m8", "f1", "f2", "f5", "klatt", "klatt2")
TEST_VARIANTS = ("m3", "m7", "f3", "f4", "klatt3")  # never heard in training
SAMPLE_RATE = 22050  # espeak-ng's
N_FFT, HOP, N_MELS, STACK = 512, 256, 40, 3
TRAINING = TrainingFlags(steps=1500, examples="utterances", eval_every=100, patience=5)


# ---------------------------------------------------------------- speaking


def espeak() -> str:
    """The path of ``espeak-ng``, or :class:`DataError` saying how to install it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DataError(
            f"the speech app speaks its data with espeak-ng, not found on PATH; {INSTALL}"
        )
    return exe


def get_data(cache: Path) -> Path:
    """There is nothing to download: check that ``espeak-ng`` runs and has the voices used;
    returns the folder of the data cache."""
    exe = espeak()
    done = subprocess.run([exe, "--voices=en"], capture_output=True, text=True, check=False)
    listed = {line.split()[1] for line in done.stdout.splitlines()[1:] if len(line.split()) > 1}
    missing = [a for a in ACCENTS if a not in listed]
    if done.returncode != 0 or missing:
        raise DataError(
            f"espeak-ng lacks the voices {', '.join(missing) or '(none listed)'}; reinstall it "
            f"with its data: `sudo apt-get install --reinstall espeak-ng espeak-ng-data`"
        )
    print(f"espeak-ng is installed ({exe}) with the {len(ACCENTS)} English accents used")
    return Path(cache)


def speak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """``text`` spoken by ``espeak-ng -v VOICE -s SPEED -p PITCH``: the waveform in [-1, 1] at
    :data:`SAMPLE_RATE`."""
    cmd = [espeak(), "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text]
    done = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    if done.returncode != 0 or not done.stdout:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no audio"])[-1]
        raise DataError(f"espeak-ng failed for voice {voice}: {last}")
    with wave.open(io.BytesIO(done.stdout)) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise DataError("espeak-ng wrote audio other than 16-bit mono")
        rate = w.getframerate()
        raw = w.readframes(w.getnframes())  # on a pipe the header's length is open: all that came
    if rate != SAMPLE_RATE:
        raise DataError(f"espeak-ng wrote {rate} Hz audio, expected {SAMPLE_RATE}")
    return np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2").astype(np.float64) / 32768


@dataclass
class Utterance:
    """One spoken digit string."""

    digits: list[int]  # the truth, 0-9
    voice: str  # espeak-ng's -v, accent+variant
    speed: int  # words a minute
    pitch: int  # 0-99
    snr_db: float  # signal-to-noise ratio of the added noise


def draw_utterances(
    num: int, variants: tuple[str, ...], rng: np.random.Generator, lengths: tuple[int, int]
) -> list[Utterance]:
    """``num`` random digit strings, each with a voice of ``variants``, a speed, a pitch and a
    noise level."""
    out = []
    for _ in range(num):
        n = int(rng.integers(lengths[0], lengths[1] + 1))
        accent = ACCENTS[int(rng.integers(len(ACCENTS)))]
        variant = variants[int(rng.integers(len(variants)))]
        out.append(
            Utterance(
                digits=rng.integers(0, 10, size=n).tolist(),
                voice=f"{accent}+{variant}",
                speed=int(rng.integers(120, 201)),
                pitch=int(rng.integers(30, 71)),
                snr_db=float(rng.uniform(15, 30)),
            )
        )
    return out


def add_noise(wave_: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White noise at ``snr_db`` decibels below the waveform's power."""
    power = np.mean(wave_**2) if len(wave_) else 0.0
    noise = rng.standard_normal(len(wave_)) * np.sqrt(power / 10 ** (snr_db / 10))
    return wave_ + noise


# ---------------------------------------------------------------- features


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, fmax: float) -> np.ndarray:
    """``(n_mels, n_fft // 2 + 1)`` triangular filters evenly spaced on the mel scale,
    mel(f) = 2595 log10(1 + f / 700), from 0 Hz to ``fmax``."""
    mel = np.linspace(0, 2595 * np.log10(1 + fmax / 700), n_mels + 2)
    hz = 700 * (10 ** (mel / 2595) - 1)  # the filters' edges and centres
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lo, mid, hi = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    rising = (freqs - lo) / (mid - lo)
    falling = (hi - freqs) / (hi - mid)
    return np.maximum(0, np.minimum(rising, falling))


_FILTERS = mel_filterbank(N_MELS, N_FFT, SAMPLE_RATE, 8000.0)


def log_mel(wave_: np.ndarray) -> np.ndarray:
    """``(frames, N_MELS)`` log-mel energies of a waveform at :data:`SAMPLE_RATE`, each band
    normalised to mean 0 and variance 1 over the utterance, ``STACK`` frames stacked into one
    step: ``(steps, STACK * N_MELS)`` float32."""
    padded = np.pad(wave_, (0, max(0, N_FFT - len(wave_))))
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]  # (F, N_FFT)
    power = np.abs(np.fft.rfft(frames * np.hanning(N_FFT), axis=1)) ** 2  # (F, N_FFT/2+1)
    feats = np.log(power @ _FILTERS.T + 1e-8)  # (F, N_MELS)
    feats = (feats - feats.mean(axis=0)) / (feats.std(axis=0) + 1e-5)
    steps = len(feats) // STACK
    return feats[: steps * STACK].reshape(steps, STACK * N_MELS).astype(np.float32)


def with_context(x: np.ndarray, k: int) -> np.ndarray:
    """``(T, N, D)`` -> ``(T, N, (2k + 1) D)``: each step with its k neighbours on each side
    (zeros past the ends), the baseline's view of the input."""
    T = x.shape[0]
    padded = np.pad(x, ((k, k), (0, 0), (0, 0)))
    return np.concatenate([padded[j : j + T] for j in range(2 * k + 1)], axis=2)


def featurise(
    utts: list[Utterance],
    rng: np.random.Generator,
    speaker=None,
    workers: int = 2,
) -> list[np.ndarray]:
    """Speak each utterance (``speaker(text, voice, speed, pitch)``, :func:`speak` by default;
    ``workers`` at a time), add its noise, and compute its :func:`log_mel` features."""
    speaker = speaker or speak
    texts = [" ".join(DIGITS[d] for d in u.digits) for u in utts]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        waves = list(
            pool.map(
                lambda a: speaker(*a), [(t, u.voice, u.speed, u.pitch) for t, u in zip(texts, utts)]
            )
        )
    return [log_mel(add_noise(w, u.snr_db, rng)) for w, u in zip(waves, utts)]


# ---------------------------------------------------------------- the models


class FrameClassifier(Module):
    """Steps in, a distribution over the classes and the blank at every step out:
    ``x (T, N, D)`` -> ``logits (T, N, C)``. With ``hidden_size`` a recurrent stack reads the
    steps first; without, each step is classified on its own (the baseline)."""

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        hidden_size: int | None = None,
        num_layers: int = 2,
        cell: str = "gru",
        bidirectional: bool = True,
        rng: np.random.Generator | None = None,
    ):
        super().__init__()
        self.rnn = None
        features = input_size
        if hidden_size:
            self.rnn = self.add_module(
                "rnn",
                make_recurrent(
                    cell, input_size, hidden_size, num_layers, bidirectional=bidirectional, rng=rng
                ),
            )
            features = self.rnn.num_directions * hidden_size
        self.head = self.add_module("head", Linear(features, num_classes, rng=rng))

    def forward(self, x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, tuple]:
        """``(logits (T, N, C), cache)``."""
        c_rnn = None
        if self.rnn is not None:
            x, _, c_rnn = self.rnn.forward(x, None, lengths)  # (T, N, dirs*H)
        logits, c_head = self.head.forward(x)
        return logits, (c_rnn, c_head)

    def backward(self, dlogits: np.ndarray, cache: tuple) -> None:
        """Adds every gradient."""
        c_rnn, c_head = cache
        dx = self.head.backward(dlogits, c_head)
        if self.rnn is not None:
            self.rnn.backward(dx, c_rnn)


def batch(feats: list[np.ndarray], idx) -> tuple[np.ndarray, np.ndarray]:
    """``(x (T, B, D), lengths (B,))`` of the utterances ``idx``, zero-padded."""
    lengths = np.array([len(feats[i]) for i in idx], dtype=np.int64)
    x = np.zeros((int(lengths.max()), len(idx), feats[idx[0]].shape[1]), dtype=np.float32)
    for b, i in enumerate(idx):
        x[: lengths[b], b] = feats[i]
    return x, lengths


def ctc_task(model_input, feats, targets, train_i, val_i, batch_size, rng) -> BatchTask:
    """CTC training on the utterances ``train_i`` (validation loss on ``val_i``);
    ``model_input(x)`` turns a batch of steps into what the model reads."""

    def loss_of(m, idx):
        x, lengths = batch(feats, idx)
        labels = [targets[i] for i in idx]
        padded = np.zeros((len(idx), max(map(len, labels))), dtype=np.int64)
        for b, t in enumerate(labels):
            padded[b, : len(t)] = t
        logits, cache = m.forward(model_input(x), lengths)
        loss, dlogits = ctc_loss(logits, padded, lengths, [len(t) for t in labels], BLANK)
        return loss, dlogits, cache

    def step(m, positions):
        loss, dlogits, cache = loss_of(m, train_i[positions])
        m.backward(dlogits, cache)
        return loss

    def val_loss(m):
        return float(
            np.mean([loss_of(m, val_i[s : s + 256])[0] for s in range(0, len(val_i), 256)])
        )

    return BatchTask(len(train_i), batch_size, rng, step, val_loss if len(val_i) else None)


def transcribe(model, model_input, feats, beam: int = 0) -> list[list[int]]:
    """Digits recognised in each utterance: best path (``beam=0``) or prefix beam search."""
    out: list[list[int]] = []
    with predicting(model):
        for start in range(0, len(feats), 128):
            idx = list(range(start, min(start + 128, len(feats))))
            x, lengths = batch(feats, idx)
            logits, _ = model.forward(model_input(x), lengths)
            if beam:
                labels = ctc_beam_decode(logits, lengths, beam, BLANK)
            else:
                labels = ctc_greedy_decode(logits, lengths, BLANK)
            out += [[k - 1 for k in seq] for seq in labels]  # class k is digit k - 1
    return out


# ---------------------------------------------------------------- the app


def build_parser() -> AppParser:
    """The command line of ``rnnkit app speech``."""
    p = AppParser(prog=PROG, description=__doc__)
    p.add_argument("--num-train", type=positive_int, default=1500, help="training utterances")
    p.add_argument(
        "--num-test", type=positive_int, default=300, help="test utterances (new voices)"
    )
    p.add_argument("--min-digits", type=positive_int, default=3, help="shortest digit string")
    p.add_argument("--max-digits", type=positive_int, default=7, help="longest digit string")
    add_model_flags(p, hidden=64, cell="gru", layers=2)
    p.add_argument("--beam", type=positive_int, default=8, help="prefix beam search width")
    p.add_argument(
        "--baseline-steps",
        type=nonnegative_int,
        default=800,
        help="training steps of the linear baseline (0: none)",
    )
    p.add_argument("--show", type=nonnegative_int, default=6, help="test transcriptions to print")
    add_split_flags(p, test=False)
    TRAINING.add_to(p)
    return p


def body(args: argparse.Namespace, speaker=None) -> dict:
    """Speak the data, train the recogniser and the baseline, score both on unseen voices;
    returns the digit error rates and exact-match shares."""
    if args.min_digits > args.max_digits:
        raise DataError("--min-digits must not exceed --max-digits")
    if speaker is None:
        espeak()  # before anything is drawn: say at once when espeak-ng is missing
    seeds = np.random.SeedSequence(args.seed).spawn(5)
    data_rng, noise_rng, model_rng, batch_rng, base_rng = (np.random.default_rng(s) for s in seeds)
    span = (args.min_digits, args.max_digits)
    train_utts = draw_utterances(args.num_train, TRAIN_VARIANTS, data_rng, span)
    test_utts = draw_utterances(args.num_test, TEST_VARIANTS, data_rng, span)
    start = time.perf_counter()
    feats = featurise(train_utts + test_utts, noise_rng, speaker)
    train_feats, test_feats = feats[: len(train_utts)], feats[len(train_utts) :]
    steps = [len(f) for f in feats]
    print(
        f"data: {len(train_utts)} training and {len(test_utts)} test utterances of "
        f"{span[0]}-{span[1]} digits spoken by espeak-ng ({len(ACCENTS)} accents; voice variants "
        f"{', '.join(TRAIN_VARIANTS)} in training, {', '.join(TEST_VARIANTS)} only in the test), "
        f"speed 120-200, pitch 30-70, noise 15-30 dB SNR; {time.perf_counter() - start:.1f} s"
    )
    print(
        f"features: log-mel, {N_MELS} bands, {STACK} frames of {HOP / SAMPLE_RATE * 1000:.1f} ms a "
        f"step; {min(steps)}-{max(steps)} steps an utterance"
    )
    short = [
        k
        for k, (f, u) in enumerate(zip(feats, train_utts + test_utts))
        if len(f) < 2 * len(u.digits) + 1
    ]
    if short:
        raise DataError(f"{len(short)} utterances have fewer steps than CTC needs for their digits")
    targets = [[d + 1 for d in u.digits] for u in train_utts]
    order = batch_rng.permutation(len(train_utts))
    n_val = int(round(args.val_fraction * len(order)))
    val_i, train_i = np.sort(order[:n_val]), np.sort(order[n_val:])
    truth = [u.digits for u in test_utts]
    D = train_feats[0].shape[1]

    model = FrameClassifier(D, 11, args.hidden_size, args.num_layers, args.cell, rng=model_rng)
    config = TRAINING.config(args)
    name = f"bidirectional {args.cell.upper()} x {args.num_layers}"
    print(
        f"model: {name}, hidden {args.hidden_size} a direction, linear head to 10 digits + blank, "
        f"{model.num_parameters():,} parameters; CTC loss; {len(train_i)} train / {len(val_i)} "
        f"validation utterances"
    )
    print(TRAINING.describe(config, min(args.batch_size, len(train_i))), flush=True)
    _, seconds = fit(
        model,
        ctc_task(lambda x: x, train_feats, targets, train_i, val_i, args.batch_size, batch_rng),
        config,
    )
    greedy = transcribe(model, lambda x: x, test_feats)
    beamed = transcribe(model, lambda x: x, test_feats, args.beam)
    scores = {
        "greedy_der": error_rate(truth, greedy),
        "greedy_exact": exact_match(greedy, truth),
        "beam_der": error_rate(truth, beamed),
        "beam_exact": exact_match(beamed, truth),
        "baseline_der": None,
        "baseline_exact": None,
        "train_seconds": seconds,
    }
    rows = [
        (f"{name}, greedy", percent(scores["greedy_der"]), percent(scores["greedy_exact"])),
        (f"{name}, beam {args.beam}", percent(scores["beam_der"]), percent(scores["beam_exact"])),
    ]
    if args.baseline_steps:
        k = 4
        base = FrameClassifier((2 * k + 1) * D, 11, rng=base_rng)
        base_config = TRAINING.config(args, steps=args.baseline_steps)
        print(
            f"baseline: a linear classifier of each step with {k} neighbours on each side, "
            f"{base.num_parameters():,} parameters, CTC loss, {args.baseline_steps} steps"
        )
        context = lambda x: with_context(x, k)  # noqa: E731
        fit(
            base,
            ctc_task(context, train_feats, targets, train_i, val_i, args.batch_size, batch_rng),
            base_config,
        )
        base_out = transcribe(base, context, test_feats, args.beam)
        scores["baseline_der"] = error_rate(truth, base_out)
        scores["baseline_exact"] = exact_match(base_out, truth)
        rows.append(
            (
                f"baseline: linear, +-{k} steps, beam {args.beam}",
                percent(scores["baseline_der"]),
                percent(scores["baseline_exact"]),
            )
        )
    header = ["", "digit error rate", "strings exactly right"]
    print_scores(f"{len(test_utts)} test utterances, voices never heard in training", rows, header)
    for u, hyp in list(zip(test_utts, beamed))[: args.show]:
        said = "".join(map(str, u.digits))
        mark = "ok" if hyp == u.digits else "wrong"
        print(f"  {u.voice:<22} said {said:<8} heard {''.join(map(str, hyp)):<8} ({mark})")
    return scores


run, main = entry_points(build_parser, body)
