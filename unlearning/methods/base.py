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
from .settings import (  # noqa: F401 (the methods import them from here)
    build_settings,
    checkpointing_setting,
    lora_setting,
    mixed_precision_setting,
    setting,
    settings_fields,
    validate_settings,
)
from .uam import Objective, UAMConfig, gradient_step


@dataclass
class UnlearnTask:
    """The concepts of one run, already validated against the model."""

    forget: list[str]  # concepts to remove
    retain: list[str]  # concepts to keep intact (for a closed vocabulary: all the others)
    anchor: str | None = None  # concept every forget concept is mapped to (None: the null condition)
    seed: int = 0
    anchors: dict[str, str] = field(default_factory=dict)  # per-concept anchors ("star -> circle"), over `anchor`
    input_polar: float | None = None  # novel-view models: the input views' polar angle in degrees (None elsewhere)

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


# ---- memory: precision, checkpointing, LoRA (settings of the training methods) ------------------

MIXED_PRECISION = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}  # the mixed_precision setting's choices


@dataclass(frozen=True)
class Memory:
    """How a training method holds its copy of the UNet (read from its settings; absent fields mean off)."""

    autocast: torch.dtype | None = None  # mixed_precision
    checkpointing: bool = False  # gradient_checkpointing
    lora_rank: int = 0  # lora_rank

    @classmethod
    def of(cls, settings: Any) -> Memory:
        return cls(MIXED_PRECISION[getattr(settings, "mixed_precision", "no")], bool(getattr(settings, "gradient_checkpointing", False)),
                   int(getattr(settings, "lora_rank", 0)))

    def autocast_context(self, device: torch.device):
        """``torch.autocast`` on the device's type in the chosen dtype, or a no-op. fp16 is refused on a CPU: CPU
        autocast keeps group norms in the input's fp16 against float32 weights, which fails (measured, torch 2.14)."""
        import contextlib

        if self.autocast == torch.float16 and device.type == "cpu":
            raise InputError("mixed_precision=fp16 needs a CUDA GPU (on a CPU, autocast leaves group norms in fp16 against float32 "
                             "weights); use bf16 on a CPU.")
        return torch.autocast(device.type, dtype=self.autocast) if self.autocast is not None else contextlib.nullcontext()

    def shares_base(self, base_dtype: torch.dtype) -> bool:
        """Whether a trained copy can read its frozen weights from the base itself: when they are float32, or
        autocast computes in their own (half) dtype anyway."""
        return base_dtype == torch.float32 or base_dtype == self.autocast


# ---- the shared training loop ------------------------------------------------------------------

def trainable_copy(adapter: FamilyAdapter, group: str, settings: Any = None,
                   select: Callable[[str], bool] | None = None) -> tuple[torch.nn.Module, list[str]]:
    """A copy of the base UNet whose ``group`` parameters (those ``select`` keeps, if given; or, with ``lora_rank``,
    LoRA factors on their layers) are float32 and trainable; returns it and the names of the trained parameters
    (see :func:`trainable_module`)."""
    names = [n for n in adapter.parameter_names(adapter.unet, group) if select is None or select(n)]
    return trainable_module(adapter.unet, names, Memory.of(settings))


def trainable_module(base: torch.nn.Module, names: Sequence[str], memory: Memory) -> tuple[torch.nn.Module, list[str]]:
    """A copy of ``base`` whose parameters ``names`` (or, with ``memory.lora_rank``, LoRA factors on their layers)
    are float32 and trainable; returns it and the names of the trained parameters.

    Frozen parameters are the base's own tensors where :meth:`Memory.shares_base` allows (nothing writes
    them: they do not require grad), otherwise float32 copies; either way the base is never changed.
    """
    import copy

    trained = set() if memory.lora_rank else set(names)
    share = memory.shares_base(next(base.parameters()).dtype)
    memo: dict[int, Any] = {}
    for name, p in base.named_parameters():
        if name in trained or not share:
            memo[id(p)] = torch.nn.Parameter(p.detach().to(torch.float32, copy=True), requires_grad=name in trained)
        else:
            memo[id(p)] = p
    module = copy.deepcopy(base, memo)  # modules and buffers copied; parameters as chosen above
    module.train()
    if memory.checkpointing:
        module.enable_gradient_checkpointing()
    if memory.lora_rank:
        return add_lora(module, names, memory.lora_rank)
    return module, list(names)


def add_lora(unet: torch.nn.Module, weight_names: Sequence[str], rank: int) -> tuple[torch.nn.Module, list[str]]:
    """peft LoRA (alpha = rank: the update is B A) on every Linear / Conv2d whose weight is in ``weight_names``;
    the factors are float32 and the only trainable parameters. Returns the model and their names."""
    from peft import LoraConfig, inject_adapter_in_model

    wanted = set(weight_names)
    targets = [n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and f"{n}.weight" in wanted]
    if not targets:
        raise InputError("this parameter group has no linear or convolution layer a LoRA could be put on; set lora_rank=0.")
    unet = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, lora_dropout=0.0), unet)
    names = []
    for name, p in unet.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()
            p.requires_grad_(True)
            names.append(name)
    return unet, names


def lora_weights(model: torch.nn.Module, base: torch.nn.Module) -> dict[str, torch.Tensor]:
    """W_0 + B A (alpha / r) for every LoRA layer of ``model``, keyed by the base's parameter names (float32, CPU).
    The base's weights are read, never written."""
    from peft.tuners.lora import LoraLayer

    own = dict(base.named_parameters())
    out = {}
    with torch.no_grad():
        for name, layer in model.named_modules():
            if isinstance(layer, LoraLayer):
                w0 = own[f"{name}.weight"]
                out[f"{name}.weight"] = (w0.float() + layer.get_delta_weight("default").float().to(w0.device)).cpu()
    return out


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
    weight_decay: float = 0.0,
    max_grad_norm: float | None = None,
    memory: Memory | None = None,
) -> list[dict]:
    """Minimise ``loss_fn(step)`` over ``params`` (leaf tensors requiring grad); returns the loss log.

    ``loss_fn`` returns the loss (optionally with a dict for the log), or an :class:`Objective` split
    into forget and retain parts; only the latter can be wrapped by UAM (``uam``). With ``memory.autocast``
    the losses are computed under autocast (fp16 adds loss scaling). ``optimizer`` "adam", "adamw" (decoupled
    ``weight_decay``) or "sgd"; ``max_grad_norm`` clips the gradient norm before each step. Gradients of the previous step are
    dropped before the next forward pass, and all of them when the loop ends.
    Stops with DivergedError the moment the loss or a gradient is not finite, saying what to do.
    """
    memory = memory or Memory()
    device = params[0].device
    if optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, betas=betas) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)
    scaler = torch.amp.GradScaler(device.type, enabled=memory.autocast == torch.float16)
    log: list[dict] = []
    for step in range(iterations):
        opt.zero_grad(set_to_none=True)
        with memory.autocast_context(device):
            out = loss_fn(step)
            if isinstance(out, Objective) and uam is not None:
                loss, extra = gradient_step(params, out, uam), out.extra
            elif isinstance(out, Objective):
                loss, extra = out.total(), out.extra
            else:
                if uam is not None:
                    raise InputError(f"{method} does not split its loss into forget and retain parts, so UAM cannot wrap it.")
                loss, extra = out if isinstance(out, tuple) else (out, {})
        if not torch.isfinite(loss):
            raise DivergedError(
                f"{method}: the loss became {loss.item()} at step {step + 1}; lower the learning rate (now {lr:g}) "
                "or the number of iterations and run again. The base model is unchanged."
            )
        if loss.requires_grad:  # UAM has filled .grad itself
            scaler.scale(loss).backward()
        if max_grad_norm is not None:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        scaler.step(opt)
        scaler.update()
        entry = {"step": step + 1, "loss": float(loss.item()), **{k: float(v) for k, v in extra.items()}}
        log.append(entry)
        ctx.report(step + 1, iterations, entry["loss"], **{k: v for k, v in entry.items() if k not in {"step", "loss"}})
    opt.zero_grad(set_to_none=True)
    return log


def finish(adapter: FamilyAdapter, unet: torch.nn.Module, names: list[str], *, method: str, settings: Any,
           log: list[dict], started: float) -> Edit:
    """Package the trained parameters as an Edit (finite-checked; unchanged ones dropped); a LoRA-trained
    copy gives the merged weights W_0 + B A of its layers."""
    info = dict(method=method, settings=dataclasses.asdict(settings), loss_log=log, base={"source": adapter.source, "family": adapter.family})
    if Memory.of(settings).lora_rank:
        merged = lora_weights(unet, adapter.unet)
        if not all(torch.isfinite(v).all() for v in merged.values()):
            raise DivergedError(f"{method} produced non-finite LoRA weights; lower the learning rate and run again. "
                                "The base model is unchanged.")
        return Edit(params=merged, timings={"unlearn_s": time.perf_counter() - started}, **info)
    return Edit.from_trained(adapter.unet, unet, names, timings={"unlearn_s": time.perf_counter() - started}, **info)


# ---- prompts of a concept and of its anchor (Concept Ablation, MACE) --------------------------------

@dataclass
class PromptPair:
    concept: int  # index in task.forget
    prompt: str  # a prompt showing the concept (c*)
    anchor: str | None  # the same prompt with the concept swapped for its anchor, or dropped (c); None: the null condition


def prompt_pairs(adapter: FamilyAdapter, task: UnlearnTask) -> list[PromptPair]:
    """For every forget concept, each of the adapter's prompts of it (``forget_prompts``: the twin's caption
    templates, generic templates for real SD, the label for class labels) with its anchor version."""
    return [PromptPair(k, p, adapter.anchor_prompt(p, concept, task.anchor_of(concept)))
            for k, concept in enumerate(task.forget) for p in adapter.forget_prompts(concept)]


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
