"""rnnkit app speech: features, noise, the CTC models, and tiny end-to-end runs: on a synthetic
waveform of tones (always), and on espeak-ng's speech where it is installed."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from rnnkit.apps import speech
from rnnkit.apps.datasets import DataError
from rnnkit.cli import main as cli_main
from rnnkit.ctc import ctc_greedy_decode


def tones(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """A stand-in for espeak-ng: each digit word becomes two sinusoids of its own frequencies
    (shifted by the pitch, stretched by the speed), with short silences between."""
    rate = speech.SAMPLE_RATE
    shift = 1 + (pitch - 50) / 200
    length = int(rate * 0.22 * 160 / speed)
    t = np.arange(length) / rate
    parts = [np.zeros(rate // 20)]
    for word in text.split():
        d = speech.DIGITS.index(word)
        f1, f2 = (300 + 90 * d) * shift, (1100 + 170 * d) * shift
        parts += [0.4 * np.sin(2 * np.pi * f1 * t) + 0.3 * np.sin(2 * np.pi * f2 * t)]
        parts += [np.zeros(rate // 20)]
    return np.concatenate(parts)


def test_mel_filterbank_is_triangles_on_the_mel_scale():
    fb = speech.mel_filterbank(10, 512, 16000, 8000.0)
    assert fb.shape == (10, 257) and fb.min() == 0 and fb.max() <= 1
    peaks = fb.argmax(axis=1)
    assert (np.diff(peaks) > 0).all()  # centres rise
    assert (np.diff(np.diff(peaks)) >= -1).all()  # and spread out: mel spacing widens in Hz
    assert (fb > 0).sum(axis=0)[1:-1].max() <= 2  # neighbours overlap, no more


def test_log_mel_shapes_and_per_band_normalisation():
    wave = tones("one two three", "x", 160, 50)
    feats = speech.log_mel(wave)
    frames = (len(wave) - speech.N_FFT) // speech.HOP + 1
    assert feats.shape == (frames // speech.STACK, speech.STACK * speech.N_MELS)
    assert feats.dtype == np.float32
    bands = feats.reshape(-1, speech.N_MELS)
    np.testing.assert_allclose(bands.mean(axis=0), 0, atol=0.2)  # the cut remainder aside
    assert speech.log_mel(np.zeros(100)).shape[1] == speech.STACK * speech.N_MELS


def test_noise_has_the_asked_signal_to_noise_ratio():
    rng = np.random.default_rng(0)
    wave = np.sin(np.linspace(0, 2000, 200_000))
    noisy = speech.add_noise(wave, 20.0, rng)
    snr = 10 * np.log10(np.mean(wave**2) / np.mean((noisy - wave) ** 2))
    assert snr == pytest.approx(20.0, abs=0.1)


def test_context_stacks_neighbours_with_zeros_at_the_ends():
    x = np.arange(1, 4, dtype=np.float32).reshape(3, 1, 1)  # steps 1, 2, 3
    out = speech.with_context(x, 1)
    np.testing.assert_array_equal(out[:, 0], [[0, 1, 2], [1, 2, 3], [2, 3, 0]])


def test_test_voices_are_never_heard_in_training():
    assert not set(speech.TRAIN_VARIANTS) & set(speech.TEST_VARIANTS)
    rng = np.random.default_rng(1)
    utts = speech.draw_utterances(50, speech.TEST_VARIANTS, rng, (3, 7))
    assert all(u.voice.split("+")[1] in speech.TEST_VARIANTS for u in utts)
    assert all(3 <= len(u.digits) <= 7 and 120 <= u.speed <= 200 for u in utts)


def test_frame_classifier_learns_a_tiny_set_with_ctc():
    """A recurrent classifier of frames overfits four tone strings: CTC's gradient is right."""
    from rnnkit.train import TrainConfig, train

    rng = np.random.default_rng(0)
    digits = [[1, 2, 3], [3, 3, 1], [0, 2], [2, 0, 1]]
    feats = [
        speech.log_mel(tones(" ".join(speech.DIGITS[d] for d in ds), "x", 160, 50)) for ds in digits
    ]
    model = speech.FrameClassifier(feats[0].shape[1], 11, 16, 1, rng=rng)
    idx = np.arange(4)
    task = speech.ctc_task(
        lambda x: x, feats, [[d + 1 for d in ds] for ds in digits], idx, idx, 4, rng
    )
    history = train(model, task, TrainConfig(steps=150, lr=0.02, progress="none"))
    assert history.train_loss[-1] < 0.2 * history.train_loss[0]
    assert speech.transcribe(model, lambda x: x, feats) == digits


def _fake_espeak(monkeypatch):
    monkeypatch.setattr(speech, "espeak", lambda: "espeak-ng")
    monkeypatch.setattr(speech, "speak", tones)


SMALL = ["--num-train", "30", "--num-test", "8", "--steps", "12", "--hidden-size", "8"]
SMALL += ["--num-layers", "1", "--baseline-steps", "4", "--eval-every", "6", "--beam", "3"]


def test_app_runs_end_to_end_on_synthetic_tones(monkeypatch, capsys):
    _fake_espeak(monkeypatch)
    assert cli_main(["app", "speech", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "30 training and 8 test utterances" in out
    assert re.search(r"GRU x 1, greedy\s+\d+\.\d\d%\s+\d+\.\d\d%", out)
    assert "baseline: linear, +-4 steps" in out
    scores, again = speech.run(SMALL), speech.run(SMALL)  # the same seed, the same scores
    assert set(scores) >= {"greedy_der", "beam_der", "baseline_der", "beam_exact"}
    scores.pop("train_seconds"), again.pop("train_seconds")
    assert scores == again and 0 <= scores["greedy_exact"] <= 1


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_app_runs_on_espeak_speech(capsys):
    argv = [*SMALL, "--num-train", "12", "--num-test", "4", "--steps", "3", "--baseline-steps", "2"]
    assert cli_main(["app", "speech", *argv]) == 0
    assert "12 training and 4 test utterances" in capsys.readouterr().out
    wave = speech.speak("four two", "en-gb+f3", 160, 50)
    assert 0.3 < len(wave) / speech.SAMPLE_RATE < 3 and np.abs(wave).max() > 0.05


def test_missing_espeak_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cli_main(["app", "speech", *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sudo apt-get install espeak-ng" in err
    assert cli_main(["data", "get", "speech"]) == 2
    assert "sudo apt-get install espeak-ng" in capsys.readouterr().err
    with pytest.raises(DataError, match="espeak-ng"):
        speech.speak("one", "en-us", 160, 50)


def test_bad_flags(capsys):
    assert cli_main(["app", "speech", "--min-digits", "5", "--max-digits", "3"]) == 2
    assert "--min-digits must not exceed" in capsys.readouterr().err
    assert cli_main(["app", "speech", "--beam", "0"]) == 2
    assert "argument --beam: must be >= 1" in capsys.readouterr().err


def test_greedy_decoding_reads_the_digits_back():
    logits = np.full((4, 1, 11), -5.0)
    for t, k in enumerate([5, 5, speech.BLANK, 5]):  # digit 4 twice
        logits[t, 0, k] = 5.0
    assert [[k - 1 for k in s] for s in ctc_greedy_decode(logits)] == [[4, 4]]
