"""Module: saving any layer or model to one file and loading it back, bit for bit; the strict
checks of a file's tensors against the module its metadata describes."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import safetensors.numpy

import rnnkit
from rnnkit.checkpoint import CHECKSUM_KEY, METADATA_KEY, CheckpointError, tensor_checksum
from rnnkit.module import FORMAT, Module, class_name, load
from rnnkit.text import Vocabulary

# Every layer and model, with options that change what is stored.
MODULES = {
    "rnn_relu_deep": lambda: rnnkit.RNN(3, 5, 2, nonlinearity="relu", bias=False, rng=1),
    "gru_course": lambda: rnnkit.GRU(4, 6, reset_after=False, batch_first=True, rng=2),
    "gru_simple": lambda: rnnkit.GRU(4, 3, simplified=True, carry_bias=1.5, rng=3),
    "lstm_full": lambda: rnnkit.LSTM(
        3,
        4,
        2,
        bidirectional=True,
        dropout=0.3,
        peephole=True,
        forget_bias=1.0,
        rng=4,
        dtype=np.float64,
    ),
    "embedding": lambda: rnnkit.Embedding(9, 4, padding_idx=0, rng=5),
    "linear": lambda: rnnkit.Linear(4, 3, bias=False, rng=6),
    "dropout": lambda: rnnkit.Dropout(0.4, rng=7),
    "language_model": lambda: rnnkit.LanguageModel(
        11, 8, 2, "gru", embedding_dim=5, dropout=0.2, rnn_options={"reset_after": False}, rng=8
    ),
    "classifier_ids": lambda: rnnkit.SequenceClassifier(
        10, 3, 6, cell="lstm", bidirectional=True, pooling="max", rng=9
    ),
    "classifier_vectors": lambda: rnnkit.SequenceClassifier(
        None, 2, 5, cell="rnn", input_size=4, pooling="mean", rng=10, dtype=np.float64
    ),
    "tagger": lambda: rnnkit.SequenceTagger(12, 4, 6, num_layers=2, cell="gru", rng=11),
    "seq2seq": lambda: rnnkit.Seq2Seq(7, 9, 6, 1, "lstm", bos_id=1, eos_id=2, rng=12),
}


def assert_same_module(a: Module, b: Module) -> None:
    assert type(a) is type(b) and a.config() == b.config()
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert list(pa) == list(pb)
    for name in pa:
        assert pa[name].dtype == pb[name].dtype and pa[name].tobytes() == pb[name].tobytes(), name


@pytest.mark.parametrize("name", list(MODULES))
def test_save_and_load_round_trip_bit_for_bit(tmp_path, name):
    module = MODULES[name]()
    rng = np.random.default_rng(0)
    for _, p in module.named_parameters():  # weights no constructor would draw
        p[...] = rng.standard_normal(p.shape)
    module.save(tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors")
    assert_same_module(module, loaded)
    # the random generators (dropout) continue where the saved ones were
    for g, h in zip(
        rnnkit.module.random_generators(module), rnnkit.module.random_generators(loaded)
    ):
        assert g.bit_generator.state == h.bit_generator.state
        assert g.random() == h.random()


def test_loaded_models_compute_the_same_outputs(tmp_path):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 10, size=(7, 3))
    clf = MODULES["classifier_ids"]()
    clf.save(tmp_path / "c.safetensors")
    again = rnnkit.load(tmp_path / "c.safetensors")
    np.testing.assert_array_equal(again.predict_proba(ids), clf.predict_proba(ids))
    assert np.allclose(again.predict_proba(ids).sum(axis=1), 1)
    np.testing.assert_array_equal(again.predict(ids), clf.predict_proba(ids).argmax(axis=1))
    s2s = MODULES["seq2seq"]()
    s2s.save(tmp_path / "s.safetensors")
    src = rng.integers(3, 7, size=(5, 2))
    assert (
        rnnkit.load(tmp_path / "s.safetensors").greedy_decode(src)[0] == s2s.greedy_decode(src)[0]
    )


def test_config_records_any_constructor_argument_without_being_told(tmp_path):
    """A new option of a layer is saved and loaded with no change to the format or the
    reader: the constructor's arguments are recorded as they are given."""

    class Scaled(rnnkit.Linear):
        def __init__(self, in_features, out_features, scale: float = 1.0, *, tag="x", **kw):
            super().__init__(in_features, out_features, **kw)
            self.scale, self.tag = scale, tag

    layer = Scaled(3, 2, 0.5, tag="new", bias=False, rng=1, dtype=np.float64)
    assert layer.config() == {
        "in_features": 3,
        "out_features": 2,
        "scale": 0.5,
        "tag": "new",
        "bias": False,
        "rng": 1,
        "dtype": "float64",
    }
    layer.save(tmp_path / "s.safetensors")
    again = load(tmp_path / "s.safetensors")
    assert type(again) is Scaled and (again.scale, again.tag) == (0.5, "new")
    assert_same_module(layer, again)
    with pytest.raises(TypeError, match="cannot be saved"):
        Scaled(3, 2, scale=object()).config()


def test_a_generator_is_state_not_config():
    lstm = rnnkit.LSTM(2, 3, rng=np.random.default_rng(5))
    assert "rng" not in lstm.config()


def test_models_and_train_are_reachable_from_import_rnnkit():
    for name in (
        "LanguageModel",
        "SequenceClassifier",
        "SequenceTagger",
        "Seq2Seq",
        "train",
        "TrainConfig",
        "load",
        "RNN",
        "GRU",
        "LSTM",
    ):
        assert hasattr(rnnkit, name), name
    assert class_name(rnnkit.LSTM) == "LSTM"


def test_a_language_model_saved_with_its_vocabulary(tmp_path):
    vocab = Vocabulary.build(["abc", "cab"], "char")
    model = rnnkit.LanguageModel(len(vocab), 8, rng=0)
    model.save(tmp_path / "lm.safetensors", vocabulary=vocab, note="kept as given")
    arrays, meta = rnnkit.checkpoint.load_checkpoint(tmp_path / "lm.safetensors")
    assert Vocabulary.from_json(meta["vocabulary"]) == vocab and meta["note"] == "kept as given"
    assert meta["format"] == FORMAT and meta["model"]["class"] == "LanguageModel"
    assert sorted(arrays) == sorted(f"model.{k}" for k, _ in model.named_parameters())


# ---------------------------------------------------------------- strict reading


def rewrite(path, arrays: dict, meta: dict) -> None:
    """Write a file with a valid checksum, as someone crafting one would."""
    stored = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    header = {METADATA_KEY: json.dumps(meta), CHECKSUM_KEY: tensor_checksum(stored)}
    path.write_bytes(safetensors.numpy.save(stored, metadata=header))


@pytest.fixture
def saved(tmp_path):
    model = rnnkit.LanguageModel(6, 4, 1, "lstm", rng=0)
    path = tmp_path / "lm.safetensors"
    model.save(path)
    arrays, meta = rnnkit.checkpoint.load_checkpoint(path)
    return path, arrays, meta


def crafted(name: str, arrays: dict, meta: dict) -> tuple[dict, dict]:
    arrays, meta = dict(arrays), json.loads(json.dumps(meta))
    w = "model.rnn.weight_hh_l0"
    if name == "int32_for_float32":  # same bytes, read as another type
        arrays[w] = arrays[w].view(np.int32)
    elif name == "float64_for_float32":
        arrays[w] = arrays[w].astype(np.float64)
    elif name == "transposed_shape":
        arrays["model.head.weight"] = np.ascontiguousarray(arrays["model.head.weight"].T)
    elif name == "missing_tensor":
        del arrays["model.head.bias"]
    elif name == "extra_tensor":
        arrays["model.head.extra"] = np.zeros(3, np.float32)
    elif name == "non_finite_weight":
        arrays[w] = arrays[w].copy()
        arrays[w][0, 0] = np.nan
    elif name == "hidden_size_changed":
        meta["model"]["config"]["hidden_size"] = 5
    elif name == "vocab_size_huge":
        meta["model"]["config"]["vocab_size"] = 10**9
    elif name == "layers_huge":
        meta["model"]["config"]["num_layers"] = 10**9
    elif name == "hidden_size_text":
        meta["model"]["config"]["hidden_size"] = "many"
    elif name == "unknown_argument":
        meta["model"]["config"]["wings"] = 2
    elif name == "unknown_class":
        meta["model"]["class"] = "os.system"
    elif name == "model_not_a_dict":
        meta["model"] = ["LanguageModel"]
    elif name == "old_format":
        meta["format"] = "rnnkit-checkpoint-1"
    elif name == "generators_missing":
        del meta["generators"]
    elif name == "generator_state_garbage":
        meta["generators"] = [{"bit_generator": "PCG64", "state": "x"}]
    else:
        raise AssertionError(name)
    return arrays, meta


CRAFTED = {
    "int32_for_float32": "weight_hh_l0 is int32",
    "float64_for_float32": "weight_hh_l0 is float64",
    "transposed_shape": r"head.weight is float32 \[4, 6\], expected float32 \[6, 4\]",
    "missing_tensor": "model.head.bias missing",
    "extra_tensor": "model.head.extra unexpected",
    "non_finite_weight": "non-finite",
    "hidden_size_changed": "do not fit the LanguageModel",
    "vocab_size_huge": "of at least .* of weights, but the file holds",
    "layers_huge": "of at least .* of weights, but the file holds",
    "hidden_size_text": "no valid LanguageModel .*many",
    "unknown_argument": "no valid LanguageModel .*wings",
    "unknown_class": "'os.system', which is no rnnkit module",
    "model_not_a_dict": "does not describe a model",
    "old_format": "format 'rnnkit-checkpoint-1'; this version of rnnkit reads",
    "generators_missing": "generators",
    "generator_state_garbage": "checkpoint",
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_files_are_refused_with_what_is_wrong(saved, case):
    path, arrays, meta = saved
    rewrite(path, *crafted(case, arrays, meta))
    tracemalloc.start()
    with pytest.raises(CheckpointError, match=CRAFTED[case]) as info:
        load(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(path) in str(info.value)
    assert peak < 20 << 20, f"{peak} bytes allocated before refusing"  # sizes bounded first


def test_best_weights_are_the_ones_loaded(saved, tmp_path):
    path, arrays, meta = saved
    best = {"best." + k[6:]: v + 1 for k, v in arrays.items() if k.startswith("model.")}
    rewrite(path, {**arrays, **best}, meta)
    model = load(path)
    for name, value in model.named_parameters():
        np.testing.assert_array_equal(value, arrays["model." + name] + 1)
    del best["best.head.bias"]
    rewrite(path, {**arrays, **best}, meta)
    with pytest.raises(CheckpointError, match="best.head.bias missing"):
        load(path)
