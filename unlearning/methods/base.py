"""What every method shares: the task, the run context, the training loop (settings: :mod:`.settings`).

A method is one settings dataclass (defaults = the paper's values, a comment per field) and one
function ``unlearn(adapter, task, settings, ctx) -> Edit``. The UI and CLI are generated from the
dataclass fields: :func:`setting` attaches the help text, the bounds and the choices.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..edit import Edit
from ..errors import CancelledError, DivergedError, InputError
from ..models.base import FamilyAdapter
from .settings import build_settings, setting, settings_fields, validate_settings  # noqa: F401 (the methods import them from here)
from .uam import Objective, UAMConfig, gradient_step


@dataclass
class UnlearnTask:
    """The concepts of one run, already validated against the model."""

    forget: list[str]  # concepts to remove
    retain: list[str]  # concepts to keep intact (for a closed vocabulary: all the others)
    anchor: str | None = None  # concept every forget concept is mapped to (None: the null condition)
    seed: int = 0
    anchors: dict[str, str] = field(default_factory=dict)  # per-concept anchors ("star -> circle"), over `anchor`

    def anchor_of(self, concept: str) -> str | None:
        return self.anchors.get(concept, self.anchor)


@dataclass
class StepReport:
    step: int
    total: int
    loss: float
    extra: dict = field(default_factory=dict)


class RunContext:
    """Progress reporting and cancellation, handed to a method by whoever runs it."""

    def __init__(self, on_step: Callable[[StepReport], None] | None = None, cancel: threading.Event | None = None):
        self.on_step = on_step
        self.cancel = cancel or threading.Event()

    def report(self, step: int, total: int, loss: float, **extra: float) -> None:
        if self.cancel.is_set():
            raise CancelledError("the run was cancelled; the base model is unchanged.")
        if self.on_step is not None:
            self.on_step(StepReport(step, total, loss, extra))


# ---- the shared training loop ------------------------------------------------------------------

def trainable_copy(adapter: FamilyAdapter, group: str) -> tuple[torch.nn.Module, list[str]]:
    """A float32 copy of the base UNet with only ``group``'s parameters trainable."""
    unet = adapter.frozen_copy_for_training()
    names = adapter.parameter_names(unet, group)
    params = dict(unet.named_parameters())
    for n in names:
        params[n].requires_grad_(True)
    return unet, names


def optimise(
    unet: torch.nn.Module,
    names: list[str],
    loss_fn: Callable[[int], torch.Tensor | tuple[torch.Tensor, dict] | Objective],
    **kwargs: Any,
) -> list[dict]:
    """Minimise ``loss_fn(step)`` over the named parameters of ``unet``; see :func:`optimise_params`."""
    wanted = set(names)
    return optimise_params([p for n, p in unet.named_parameters() if n in wanted], loss_fn, **kwargs)


def optimise_params(
    params: list[torch.Tensor],
    loss_fn: Callable[[int], torch.Tensor | tuple[torch.Tensor, dict] | Objective],
    *,
    iterations: int,
    lr: float,
    ctx: RunContext,
    method: str,
    optimizer: str = "adam",
    betas: tuple[float, float] = (0.9, 0.999),
    uam: UAMConfig | None = None,
) -> list[dict]:
    """Minimise ``loss_fn(step)`` over ``params`` (leaf tensors requiring grad); returns the loss log.

    ``loss_fn`` returns the loss (optionally with a dict for the log), or an :class:`Objective` split
    into forget and retain parts; only the latter can be wrapped by UAM (``uam``). ``optimizer``: "adam",
    "adamw" (torch's AdamW, weight decay 0.01) or "sgd".
    Stops with DivergedError the moment the loss or a gradient is not finite, saying what to do.
    """
    if optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, betas=betas)
    else:
        opt = torch.optim.Adam(params, lr=lr, betas=betas) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)
    log: list[dict] = []
    for step in range(iterations):
        out = loss_fn(step)
        if isinstance(out, Objective):
            loss, extra = gradient_step(params, out, uam), out.extra
        else:
            if uam is not None:
                raise InputError(f"{method} does not split its loss into forget and retain parts, so UAM cannot wrap it.")
            loss, extra = out if isinstance(out, tuple) else (out, {})
        if not torch.isfinite(loss):
            raise DivergedError(
                f"{method}: the loss became {loss.item()} at step {step + 1}; lower the learning rate (now {lr:g}) "
                "or the number of iterations and run again. The base model is unchanged."
            )
        if not isinstance(out, Objective):
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        entry = {"step": step + 1, "loss": float(loss.item()), **{k: float(v) for k, v in extra.items()}}
        log.append(entry)
        ctx.report(step + 1, iterations, entry["loss"], **{k: v for k, v in entry.items() if k not in {"step", "loss"}})
    return log


def finish(adapter: FamilyAdapter, unet: torch.nn.Module, names: list[str], *, method: str, settings: Any,
           log: list[dict], started: float) -> Edit:
    """Package the trained parameters as an Edit (finite-checked; unchanged ones dropped)."""
    return Edit.from_trained(
        adapter.unet,
        unet,
        names,
        method=method,
        settings=dataclasses.asdict(settings),
        loss_log=log,
        timings={"unlearn_s": time.perf_counter() - started},
        base={"source": adapter.source, "family": adapter.family},
    )


# ---- data pools and the denoising loss (shared by the data-based methods) -----------------------

@dataclass
class ConceptPool:
    """x_0 samples and their conditions, drawn once per run and indexed per step."""

    x0: torch.Tensor  # (N, C, H, W) in model space
    cond: torch.Tensor  # (N, T, D)

    @classmethod
    def build(cls, adapter: FamilyAdapter, concepts: Sequence[str], per_concept: int, seed: int,
              condition_on: Sequence[str] | None = None) -> ConceptPool:
        """Data of ``concepts``; conditioned on ``condition_on`` (same length) when given, e.g. to
        relabel forget images with another concept."""
        labels = condition_on or concepts
        xs, cs = [], []
        with torch.no_grad():
            for i, (concept, label) in enumerate(zip(concepts, labels, strict=True)):
                xs.append(adapter.concept_data(concept, per_concept, seed + 7919 * i))
                cs.append(adapter.encode([adapter.prompt_for(label)] * per_concept))
        return cls(torch.cat(xs), torch.cat(cs))

    @classmethod
    def captioned(cls, adapter: FamilyAdapter, concepts: Sequence[str], per_concept: int, seed: int) -> ConceptPool:
        """Data of ``concepts``, each sample conditioned on its own caption (``adapter.captioned_data``)."""
        xs, cs = [], []
        with torch.no_grad():
            for i, concept in enumerate(concepts):
                x0, captions = adapter.captioned_data(concept, per_concept, seed + 7919 * i)
                xs.append(x0)
                cs.append(adapter.encode(captions))
        return cls(torch.cat(xs), torch.cat(cs))

    def batch(self, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.x0), (size,), generator=g)
        return self.x0[idx], self.cond[idx]


def forward_noise(adapter: FamilyAdapter, x0: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, eps): x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps with t ~ U{0..T-1}, eps ~ N(0, I); t is on x0's device."""
    noise = torch.randn(x0.shape, generator=g).to(x0.device, x0.dtype)
    t = torch.randint(adapter.noise_scheduler.config.num_train_timesteps, (x0.shape[0],), generator=g)
    return adapter.noise_scheduler.add_noise(x0, noise, t), t.to(x0.device), noise


def denoising_loss(adapter: FamilyAdapter, unet: torch.nn.Module, x0: torch.Tensor, cond: torch.Tensor,
                   g: torch.Generator, weights: torch.Tensor | None = None) -> torch.Tensor:
    """L_simple (Ho et al. 2020): || eps - eps_theta(sqrt(a_t) x_0 + sqrt(1 - a_t) eps, t, c) ||^2,
    t ~ U{0..T-1}; optional per-timestep weights C_t (a (T,) tensor)."""
    x_t, t, noise = forward_noise(adapter, x0, g)
    per_sample = F.mse_loss(adapter.eps(unet, x_t, t, cond).float(), noise.float(), reduction="none")
    per_sample = per_sample.flatten(1).mean(1)  # (B,)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.device)[t]
    return per_sample.mean()
