"""Module: named parameters and their gradients, state dicts, train/eval mode."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np


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

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError


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
