"""Module: named parameters and their gradients, state dicts, train/eval mode, inference mode,
and saving a module to one file and loading it back (:meth:`Module.save`, :func:`load`).

A saved module is a checkpoint (:mod:`rnnkit.checkpoint`) whose metadata describes it: its
class and its constructor arguments, recorded as they were given (:meth:`Module.config`), so
that :func:`load` builds the same module and can check every stored tensor against it before
using one. A new constructor argument of a layer is saved and loaded with no change here.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .init import ParameterBudgetExceeded, parameter_budget
from .memory import format_bytes
from .version import __version__

FORMAT = "rnnkit-checkpoint-2"  # the metadata layout this version writes and reads
MODEL, BEST = "model.", "best."  # prefixes of the stored weights: the last ones, the best ones

# Every Module subclass by name: the classes `load` may build (never an arbitrary import).
_CLASSES: dict[str, type] = {}


def _to_numpy(value: object) -> np.ndarray:
    """An array from a NumPy array, a nested list, or a torch tensor (without importing torch)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


class Module:
    """Base of every layer and model.

    A module owns ``params`` and ``grads``, two dicts with the same keys; it never keeps the
    caches of a forward pass (``forward`` returns them and ``backward`` takes them back), so one
    module can run several forward passes before their backward passes. ``backward`` adds
    (``+=``) into ``grads``; :meth:`zero_grad` clears them. Child modules registered with
    :meth:`add_module` contribute their parameters under ``"child_name.param_name"``.
    """

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        _CLASSES[class_name(cls)] = cls
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_arguments(cls.__dict__["__init__"])

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.children: dict[str, Module] = {}
        self.training = True

    def add_param(self, name: str, value: np.ndarray) -> None:
        """Register a parameter and a zero gradient of the same shape and dtype."""
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)

    def add_module(self, name: str, module: Module) -> Module:
        """Register a child module, returning it."""
        self.children[name] = module
        return module

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(name, array)`` for this module's parameters, then its children's."""
        yield from self.params.items()
        for child_name, child in self.children.items():
            for name, value in child.named_parameters():
                yield f"{child_name}.{name}", value

    def named_grads(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(name, gradient)`` in the order of :meth:`named_parameters`."""
        yield from self.grads.items()
        for child_name, child in self.children.items():
            for name, value in child.named_grads():
                yield f"{child_name}.{name}", value

    def num_parameters(self) -> int:
        """Number of scalar parameters."""
        return sum(int(v.size) for _, v in self.named_parameters())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter by name (PyTorch's names, so ``torch.nn`` can load them)."""
        return {name: value.copy() for name, value in self.named_parameters()}

    def load_state_dict(self, state_dict: Mapping[str, object]) -> None:
        """Copy arrays (NumPy or torch) into the parameters, in place.

        Raises:
            ValueError: a name is missing or unexpected, or a shape differs; nothing is
                changed then.
        """
        own = dict(self.named_parameters())
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"state dict does not match {type(self).__name__}: "
                f"missing keys {missing}, unexpected keys {unexpected}"
            )
        arrays = {name: _to_numpy(value) for name, value in state_dict.items()}
        for name, array in arrays.items():
            if array.shape != own[name].shape:
                raise ValueError(
                    f"state dict entry {name!r} has shape {array.shape}, expected {own[name].shape}"
                )
            if not np.all(np.isfinite(array)):
                raise ValueError(f"state dict entry {name!r} holds non-finite values")
        for name, array in arrays.items():
            own[name][...] = array

    def zero_grad(self) -> None:
        """Set every gradient to zero."""
        for _, grad in self.named_grads():
            grad.fill(0)

    def train(self, mode: bool = True) -> Module:
        """Training mode (dropout active) for this module and its children."""
        self.training = mode
        for child in self.children.values():
            child.train(mode)
        return self

    def eval(self) -> Module:
        """Evaluation mode: dropout off."""
        return self.train(False)

    def config(self) -> dict:
        """The arguments this module's constructor was called with (defaults filled in), as
        JSON values, so that ``type(module)(**module.config())`` builds the same
        architecture. Random generators are left out: they are state, saved beside (see
        :meth:`save`). A subclass may override this to describe itself otherwise."""
        return {
            name: _json_value(value, f"{type(self).__name__}({name}=...)")
            for name, value in self.__dict__.get("_arguments", {}).items()
            if not isinstance(value, np.random.Generator)
        }

    def save(self, path: str | os.PathLike, **metadata: object) -> None:
        """Save the module to one safetensors file: its weights, its class and
        :meth:`config`, and the state of its random generators (dropout), written atomically.

        ``metadata`` entries are stored beside (JSON values, or objects with a ``to_json()``
        method such as a :class:`~rnnkit.text.Vocabulary`); a language model saved with
        ``vocabulary=vocab`` can be used by ``rnnkit sample``, ``eval`` and ``score``.
        :func:`load` reads the file back.
        """
        extra = {k: v.to_json() if hasattr(v, "to_json") else v for k, v in metadata.items()}
        arrays = {MODEL + name: value for name, value in self.named_parameters()}
        save_checkpoint(path, arrays, {**describe(self), **extra})

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError


_inference = threading.local()  # .depth: inference_mode blocks this thread is inside


@contextmanager
def inference_mode() -> Iterator[None]:
    """``with rnnkit.inference_mode():`` forward passes in the block keep nothing for a
    backward pass, as under ``torch.inference_mode()``: faster, and they hold less memory.
    Give one of their caches to a backward pass and it says so. It does not switch dropout
    off (that is evaluation mode, :meth:`Module.eval`; :func:`predicting` does both). For this
    thread only; blocks nest."""
    _inference.depth = getattr(_inference, "depth", 0) + 1
    try:
        yield
    finally:
        _inference.depth -= 1


def is_inference_mode() -> bool:
    """Whether this thread is inside :func:`inference_mode`."""
    return getattr(_inference, "depth", 0) > 0


@contextmanager
def evaluating(module: Module) -> Iterator[Module]:
    """``with evaluating(model):`` runs the block in evaluation mode (dropout off), then puts
    the module back in the mode it was in, even if the block raises."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@contextmanager
def predicting(module: Module) -> Iterator[Module]:
    """``with predicting(model):`` for forward passes that no backward pass follows: evaluation
    mode (dropout off) and :func:`inference_mode` together."""
    with evaluating(module), inference_mode():
        yield module


# ---------------------------------------------------------------- saving and loading


def class_name(cls: type) -> str:
    """The name a file stores for a class: its own name for rnnkit's classes (so files do not
    depend on which module defines them), the module path too for others."""
    if cls.__module__.split(".")[0] == "rnnkit":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _recording_arguments(init: Callable) -> Callable:
    """Wrap a constructor so the outermost call records its arguments on the instance."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        if "_arguments" not in self.__dict__:  # a subclass's constructor already recorded
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError:
                return init(self, *args, **kwargs)  # let the constructor say what is wrong
            bound.apply_defaults()
            arguments = dict(list(bound.arguments.items())[1:])  # without self
            for p in signature.parameters.values():
                if p.kind is p.VAR_KEYWORD:
                    arguments.update(arguments.pop(p.name))
            self.__dict__["_arguments"] = arguments
        init(self, *args, **kwargs)

    return __init__


def _json_value(value: object, where: str) -> object:
    """``value`` as JSON (a dtype by its name); TypeError if it has no JSON form."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return np.dtype(value).name
    if isinstance(value, (list, tuple)):
        return [_json_value(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json_value(v, where) for k, v in value.items()}
    raise TypeError(f"{where}: a {type(value).__name__} cannot be saved as a constructor argument")


def random_generators(module: Module) -> list[np.random.Generator]:
    """Every distinct random generator the module and its children hold (for dropout), in a
    fixed order, so a file can save and restore them."""
    found: list[np.random.Generator] = []
    stack = [module]
    while stack:
        current = stack.pop(0)
        rng = getattr(current, "rng", None)
        if isinstance(rng, np.random.Generator) and all(rng is not g for g in found):
            found.append(rng)
        stack.extend(current.children.values())
    return found


def describe(module: Module) -> dict:
    """The metadata that lets :func:`load` rebuild ``module``: format, class and config,
    and the state of its random generators."""
    return {
        "format": FORMAT,
        "library_version": __version__,
        "model": {"class": class_name(type(module)), "config": module.config()},
        "generators": [g.bit_generator.state for g in random_generators(module)],
    }


def load(path: str | os.PathLike) -> Module:
    """The module saved in ``path`` by :meth:`Module.save` (or a training run's checkpoint,
    whose best weights it takes when the run kept them), in training mode.

    Raises:
        CheckpointError: the file is damaged, or its tensors are not exactly those of the
            module its metadata describes (names, dtypes, shapes); the message says which.
    """
    arrays, metadata = load_checkpoint(path)
    return module_from_checkpoint(path, metadata, arrays)


def module_from_checkpoint(
    path: str | os.PathLike, metadata: dict, arrays: dict[str, np.ndarray], weights: str = "kept"
) -> Module:
    """Build the module ``metadata`` describes and put the stored weights in it.

    ``weights="kept"`` takes the best weights where the file holds them (``best.*``), else
    the last ones (``model.*``); ``"last"`` always the last. Before any allocation the module
    is bounded by the size of the weights the file holds; every tensor of the module is
    checked (name, dtype, shape) before one is used.
    """
    fmt = metadata.get("format")
    if fmt != FORMAT:
        what = f"format {fmt!r}" if isinstance(fmt, str) else "no format this version knows"
        raise CheckpointError(
            f"checkpoint {path} has {what}; this version of rnnkit reads {FORMAT!r} "
            f"(train the model again, or load it with the version that wrote it)"
        )
    spec = metadata.get("model")
    if not (
        isinstance(spec, dict)
        and set(spec) == {"class", "config"}
        and isinstance(spec["class"], str)
        and isinstance(spec["config"], dict)
    ):
        raise CheckpointError(
            f"checkpoint {path}: its metadata does not describe a model "
            f'("model" must be {{"class": name, "config": {{...}}}})'
        )
    cls = _CLASSES.get(spec["class"])
    if cls is None:
        raise CheckpointError(
            f"checkpoint {path} holds a {spec['class']!r}, which is no rnnkit module "
            f"(import the module that defines it first)"
        )
    stored = {k[len(MODEL) :]: a for k, a in arrays.items() if k.startswith(MODEL)}
    size = sum(a.nbytes for a in stored.values())
    try:  # bounded by the weights stored (with room to say which tensors are missing)
        with parameter_budget(2 * size + (1 << 20)):
            module = cls(**spec["config"])
    except ParameterBudgetExceeded as e:
        raise CheckpointError(
            f"checkpoint {path}: its metadata describes a {cls.__name__} of at least "
            f"{format_bytes(e.needed)} of weights, but the file holds {format_bytes(size)}"
        ) from None
    except Exception as e:  # whatever a constructor says about arguments it cannot take
        raise CheckpointError(
            f"checkpoint {path}: its metadata describes no valid {cls.__name__} "
            f"({type(e).__name__}: {e})"
        ) from None
    check_tensors(path, module, stored, MODEL)
    best = {k[len(BEST) :]: a for k, a in arrays.items() if k.startswith(BEST)}
    if best:
        check_tensors(path, module, best, BEST)
    try:
        module.load_state_dict(best if best and weights == "kept" else stored)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    restore_generators(path, module, metadata.get("generators"))
    return module


def restore_generators(path, module: Module, states: object) -> None:
    """Put saved states into the module's random generators; CheckpointError if they are
    not one valid state for each of them."""
    generators = random_generators(module)
    if not isinstance(states, list) or len(states) != len(generators):
        raise CheckpointError(
            f'checkpoint {path}: "generators" must list the states of {len(generators)} '
            f"random generators"
        )
    for g, state in zip(generators, states):
        try:
            g.bit_generator.state = state
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            raise CheckpointError(
                f"checkpoint {path}: the saved state of a random generator is not valid "
                f"({type(e).__name__}: {e})"
            ) from None


def check_tensors(path, module: Module, stored: dict[str, np.ndarray], prefix: str) -> None:
    """CheckpointError unless ``stored`` holds every parameter of ``module`` under its name,
    with its dtype and shape, and nothing else (``prefix`` is how the file names them)."""
    own = dict(module.named_parameters())
    problems = [f"{prefix}{n} missing" for n in own if n not in stored]
    problems += [f"{prefix}{n} unexpected" for n in stored if n not in own]
    for n in own.keys() & stored.keys():
        want, got = own[n], stored[n]
        if (got.dtype, got.shape) != (want.dtype, want.shape):
            problems.append(
                f"{prefix}{n} is {got.dtype} {list(got.shape)}, "
                f"expected {want.dtype} {list(want.shape)}"
            )
    if problems:
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise CheckpointError(
            f"checkpoint {path}: its tensors do not fit the {type(module).__name__} its "
            f"metadata describes: {'; '.join(sorted(problems)[:5])}{more}"
        )
