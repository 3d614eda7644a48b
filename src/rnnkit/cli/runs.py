"""A trained language model as the commands that use one read it: a run folder written by
``rnnkit train``, or a file written by ``LanguageModel.save(path, vocabulary=vocab)``.

Readers take no lock: a checkpoint is replaced atomically, so they read the last whole one.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..checkpoint import CheckpointError, load_checkpoint
from ..models import LanguageModel
from ..module import module_from_checkpoint
from ..text import Vocabulary
from ..train import CHECKPOINT_NAME
from .core import UsageError
from .options import saved_problem

NAMES_FILE = "dinosaurs.txt"


def bundled_names() -> Path:
    """The dinosaur names shipped inside the package (see its NOTICE)."""
    return Path(str(resources.files("rnnkit") / "resources" / NAMES_FILE))


def start_token(vocab: Vocabulary, mode: str) -> int:
    """What a language model reads before a new sequence: ``<eos>``, or a line break in a
    char stream."""
    if mode == "stream" and vocab.level == "char" and "\n" in vocab.ids:
        return vocab.ids["\n"]
    return vocab.eos_id


@dataclass
class Run:
    """A language model ready to use, with what it needs to read and write text."""

    where: str  # the folder or file, as the user gave it
    model: LanguageModel
    vocab: Vocabulary
    mode: str  # "stream" or "lines": how sequences start and end
    meta: dict

    def start_id(self) -> int:
        """What the model reads before a new sequence (:func:`start_token`)."""
        return start_token(self.vocab, self.mode)

    def describe(self) -> str:
        """One line: what was loaded."""
        config = self.model.config()
        step = self.meta.get("step")
        trained = f"; trained {step:,} steps" if isinstance(step, int) else ""
        return (
            f"model: {self.where}: {config['cell']} x {config['num_layers']}, hidden "
            f"{config['hidden_size']}, {self.model.num_parameters():,} parameters; vocabulary "
            f"{len(self.vocab):,} tokens ({self.vocab.level} level, {self.mode} mode){trained}"
        )


def checkpoint_path(where: str) -> Path:
    """The checkpoint file of a run folder, or the file itself."""
    path = Path(where)
    if path.is_dir():
        ckpt = path / CHECKPOINT_NAME
        if not ckpt.exists():
            raise UsageError(
                f"{path} holds no {CHECKPOINT_NAME}; train a model there first "
                f"(rnnkit train FILE --out {path})"
            )
        return ckpt
    if not path.exists():
        raise UsageError(
            f"{path} is not a folder or a file; give the --out folder of a training run "
            f"(or a language model saved from Python)"
        )
    return path


def load_run(where: str) -> Run:
    """The language model of a run folder or a saved file, in evaluation mode, with the
    weights the run kept (its best validation), every part of it checked first."""
    ckpt = checkpoint_path(where)
    arrays, meta = load_checkpoint(ckpt)
    model = module_from_checkpoint(ckpt, meta, arrays)
    if not isinstance(model, LanguageModel):
        raise CheckpointError(f"{ckpt} holds a {type(model).__name__}, not a language model")
    if "vocabulary" not in meta:
        raise CheckpointError(
            f"{ckpt} holds no vocabulary (save a language model with "
            f"model.save(path, vocabulary=vocab))"
        )
    try:
        vocab = Vocabulary.from_json(meta["vocabulary"])
    except ValueError as e:
        raise CheckpointError(f"checkpoint {ckpt}: {e}") from None
    if len(vocab) != model.vocab_size:
        raise CheckpointError(
            f"checkpoint {ckpt}: its vocabulary has {len(vocab)} tokens, its model "
            f"{model.vocab_size}"
        )
    mode = "lines"  # a model saved from Python reads lines unless it says otherwise
    if "options" in meta:  # written by rnnkit train
        problem = saved_problem(meta["options"])
        if problem is None and meta["options"]["level"] != vocab.level:
            problem = "its options and its vocabulary disagree on the level"
        if problem:
            raise CheckpointError(f"checkpoint {ckpt}: {problem}")
        mode = meta["options"]["mode"]
    model.eval()
    return Run(where, model, vocab, mode, meta)
