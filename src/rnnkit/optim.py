"""Optimisers keyed by parameter name, gradient clipping, and learning-rate schedules.

The update rules follow PyTorch's ``torch.optim`` line by line, so a model trained here and a
PyTorch twin with the same weights and batches take the same steps.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import parallel
from .module import Module


class NonFiniteGradientError(ValueError):
    """A gradient held inf or nan; the step was refused and no weight changed."""


_SPLIT = 1 << 17  # parameters (in all) below which one thread updates them all (a few us)


def _memory_of(array: np.ndarray) -> np.ndarray:
    """The array that owns ``array``'s memory (itself, or the base of a view)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def _grads_of(target: Module | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(target.named_grads()) if isinstance(target, Module) else dict(target)


def grad_norm(target: Module | dict[str, np.ndarray]) -> float:
    """Global L2 norm of all gradients (inf or nan if any entry is)."""
    total = 0.0
    with parallel.region():  # a BLAS dot on two threads leaves a worker spinning after it
        for g in _grads_of(target).values():
            g64 = g.astype(np.float64, copy=False).ravel()  # float32 squares overflow past 1e19
            total += float(g64 @ g64)
    return math.sqrt(total)


def clip_grad_norm_(
    target: Module | dict[str, np.ndarray], max_norm: float, norm: float | None = None
) -> float:
    """Scale every gradient by ``max_norm / norm`` when the global norm exceeds ``max_norm``.

    Returns the norm before clipping; ``norm``, where given, is :func:`grad_norm` of these
    gradients as they are, already measured (the training loop checks it first). A
    non-finite norm is returned as is and the gradients are left untouched: scaling by it
    would spread nan everywhere. :meth:`Optimizer.step` then refuses the step, so the weights
    never see it.
    """
    if norm is None:
        norm = grad_norm(target)
    if math.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + 1e-6)  # PyTorch's epsilon
        for g in _grads_of(target).values():
            g *= scale
    return norm


def clip_grad_value_(target: Module | dict[str, np.ndarray], clip_value: float) -> None:
    """The course's clipping: every gradient entry into ``[-clip_value, clip_value]``."""
    for g in _grads_of(target).values():
        np.clip(g, -clip_value, clip_value, out=g)


# ---------------------------------------------------------------- schedules (pure functions)


def constant_lr(step: int, lr: float) -> float:
    """The same rate at every step."""
    return lr


def step_lr(step: int, lr: float, step_size: int, gamma: float = 0.1) -> float:
    """Multiply the rate by ``gamma`` every ``step_size`` steps."""
    return lr * gamma ** (step // step_size)


def warmup_cosine_lr(
    step: int, lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0
) -> float:
    """Linear warm-up over ``warmup_steps``, then a cosine decay to ``min_lr`` at the end."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------- optimisers


class Optimizer:
    """Base: holds the model's parameters and gradients by name, and per-parameter buffers.

    ``step()`` updates every parameter in place from its gradient; ``lr`` may be changed
    between steps (for a schedule). ``state_dict()`` holds everything needed to resume.
    """

    buffer_names: tuple[str, ...] = ()

    def __init__(self, module: Module, lr: float):
        if not lr > 0:
            raise ValueError(f"learning rate must be > 0, got {lr!r}")
        self.params = dict(module.named_parameters())
        self.grads = dict(module.named_grads())
        # Parameters that share memory (a module registered twice) are updated in turn.
        owners = {id(_memory_of(p)) for p in self.params.values()}
        self._apart = len(owners) == len(self.params)
        self.lr = float(lr)
        self.step_count = 0
        self.buffers: dict[str, dict[str, np.ndarray]] = {b: {} for b in self.buffer_names}

    def step(self) -> None:
        """One update. Raises :class:`NonFiniteGradientError`, changing nothing, if a
        gradient holds inf or nan."""
        bad = [name for name, g in self.grads.items() if not np.all(np.isfinite(g))]
        if bad:
            raise NonFiniteGradientError(
                f"non-finite gradient in {', '.join(bad)}; step skipped, weights unchanged"
            )
        self.step_count += 1
        largest_first = sorted(self.params.items(), key=lambda item: -item[1].size)
        updates = [functools.partial(self._update, n, p, self.grads[n]) for n, p in largest_first]
        if sum(p.size for p in self.params.values()) < _SPLIT or not self._apart:
            for update in updates:
                update()
        else:  # on rnnkit's threads: each parameter's update is its own, the same numbers
            parallel.run(updates)

    def zero_grad(self) -> None:
        """Set every gradient to zero."""
        for g in self.grads.values():
            g.fill(0)

    def _buffer(self, kind: str, name: str, like: np.ndarray) -> np.ndarray:
        buf = self.buffers[kind].get(name)
        if buf is None:
            buf = self.buffers[kind][name] = np.zeros_like(like)
        return buf

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        raise NotImplementedError

    def hyperparameters(self) -> dict:
        """The settings a checkpoint records (JSON-friendly)."""
        return {"lr": self.lr}

    def state_dict(self) -> dict:
        """``{"type", "step", "hyper", "buffers": {"kind.param": array}}`` (copies)."""
        flat = {
            f"{kind}.{name}": buf.copy()
            for kind, bufs in self.buffers.items()
            for name, buf in bufs.items()
        }
        return {
            "type": type(self).__name__,
            "step": self.step_count,
            "hyper": self.hyperparameters(),
            "buffers": flat,
        }

    def used_buffers(self) -> tuple[str, ...]:
        """The kinds of buffer a step of this optimiser fills (with these settings)."""
        return self.buffer_names

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` gave; ValueError, changing nothing, if it is not a
        state this optimiser could have reached (another optimiser, a step count that is not
        a whole number >= 0, a missing, extra or misshapen buffer)."""
        if not isinstance(state, dict) or state.get("type") != type(self).__name__:
            got = state.get("type") if isinstance(state, dict) else state
            raise ValueError(f"optimiser state is for {got!r}, not {type(self).__name__}")
        step, hyper = state.get("step"), state.get("hyper")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"optimiser step must be a whole number >= 0, got {step!r}")
        lr = hyper.get("lr") if isinstance(hyper, dict) else None
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
            raise ValueError(f"optimiser learning rate must be a number > 0, got {lr!r}")
        expected = {f"{kind}.{name}" for kind in self.used_buffers() for name in self.params}
        saved = state.get("buffers")
        if not isinstance(saved, dict) or set(saved) != (expected if step else set()):
            missing = sorted(expected - set(saved or ())) if step else []
            extra = sorted(set(saved or ()) - (expected if step else set()))
            raise ValueError(
                f"optimiser state at step {step} does not hold the buffers it should "
                f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''})"
            )
        buffers: dict[str, dict[str, np.ndarray]] = {b: {} for b in self.buffer_names}
        for key, value in saved.items():
            kind, _, name = key.partition(".")
            p = self.params[name]
            if value.shape != p.shape or value.dtype != p.dtype:
                raise ValueError(
                    f"optimiser state {key!r} is {value.dtype} {value.shape}, "
                    f"expected {p.dtype} {p.shape}"
                )
            if not np.all(np.isfinite(value)):
                raise ValueError(f"optimiser state {key!r} holds non-finite values")
            buffers[kind][name] = np.array(value)
        self.buffers = buffers
        self.step_count = step
        self.lr = float(lr)


class SGD(Optimizer):
    """Stochastic gradient descent, with optional momentum (heavy-ball or Nesterov)."""

    buffer_names = ("momentum",)

    def __init__(
        self,
        module: Module,
        lr: float = 0.1,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ):
        super().__init__(module, lr)
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay

    def hyperparameters(self) -> dict:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
        }

    def used_buffers(self) -> tuple[str, ...]:
        return ("momentum",) if self.momentum else ()

    def _update(self, name, p, g):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            first = name not in self.buffers["momentum"]
            buf = self._buffer("momentum", name, p)
            if first:
                buf[...] = g
            else:
                buf *= self.momentum
                buf += g  # v = μ v + g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= self.lr * g


class Adagrad(Optimizer):
    """Adagrad: each entry's step is scaled by the root of its summed squared gradients."""

    buffer_names = ("sum",)

    def __init__(self, module: Module, lr: float = 0.01, eps: float = 1e-10):
        super().__init__(module, lr)
        self.eps = eps

    def hyperparameters(self) -> dict:
        return {"lr": self.lr, "eps": self.eps}

    def _update(self, name, p, g):
        acc = self._buffer("sum", name, p)
        acc += g * g
        p -= self.lr * g / (np.sqrt(acc) + self.eps)


class RMSprop(Optimizer):
    """RMSprop: steps scaled by a running root-mean-square of the gradients."""

    buffer_names = ("square_avg", "momentum")

    def __init__(
        self,
        module: Module,
        lr: float = 0.01,
        alpha: float = 0.99,
        eps: float = 1e-8,
        momentum: float = 0.0,
    ):
        super().__init__(module, lr)
        self.alpha, self.eps, self.momentum = alpha, eps, momentum

    def hyperparameters(self) -> dict:
        return {"lr": self.lr, "alpha": self.alpha, "eps": self.eps, "momentum": self.momentum}

    def used_buffers(self) -> tuple[str, ...]:
        return ("square_avg", "momentum") if self.momentum else ("square_avg",)

    def _update(self, name, p, g):
        sq = self._buffer("square_avg", name, p)
        sq *= self.alpha
        sq += (1 - self.alpha) * g * g
        step = g / (np.sqrt(sq) + self.eps)
        if self.momentum:
            buf = self._buffer("momentum", name, p)
            buf *= self.momentum
            buf += step
            step = buf
        p -= self.lr * step


class Adam(Optimizer):
    """Adam with bias correction; ``weight_decay`` adds L2 to the gradient (PyTorch's Adam)."""

    buffer_names = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(
        self,
        module: Module,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(module, lr)
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay

    def hyperparameters(self) -> dict:
        return {
            "lr": self.lr,
            "betas": list(self.betas),
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }

    def _update(self, name, p, g):
        beta1, beta2 = self.betas
        if self.weight_decay and self.decoupled:
            p *= 1 - self.lr * self.weight_decay
        elif self.weight_decay:
            g = g + self.weight_decay * p
        m = self._buffer("exp_avg", name, p)
        v = self._buffer("exp_avg_sq", name, p)
        bias1 = 1 - beta1**self.step_count
        bias2 = 1 - beta2**self.step_count
        work = np.multiply(g, 1 - beta1)  # the one temporary, like p
        m *= beta1
        m += work  # m = β1 m + (1-β1) g
        np.multiply(g, 1 - beta2, out=work)
        work *= g
        v *= beta2
        v += work  # v = β2 v + (1-β2) g²
        np.sqrt(v, out=work)
        work /= math.sqrt(bias2)
        work += self.eps  # sqrt(v / bias2) + ε
        np.divide(m, work, out=work)
        work *= self.lr / bias1
        p -= work  # p -= lr m̂ / (sqrt(v̂) + ε)


class AdamW(Adam):
    """Adam with decoupled weight decay: ``p *= 1 - lr * weight_decay`` before the step."""

    decoupled = True

    def __init__(
        self,
        module: Module,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ):
        super().__init__(module, lr, betas, eps, weight_decay)


OPTIMIZERS = {"sgd": SGD, "adagrad": Adagrad, "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW}
