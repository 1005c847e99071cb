"""The family adapter: everything a method needs from a model family, and nothing more.

A method talks to an adapter, never to a checkpoint, so a method proven on an embedded twin runs
unchanged on the real model of the same family. Adapters hold the *frozen base* model; methods
train copies (see :mod:`unlearning.edit`), and nothing here changes the base weights.

Notation used by every family (DDPM / DDIM, Ho et al. 2020; Song et al. 2021):
    x_0       clean sample in the model's space (pixels for digits, VAE latents for SD)
    x_t       noisy sample at timestep t:  x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
    c         condition (encoder hidden states of a concept), c_null the unconditional one
    eps(x_t, t, c)   the network's noise prediction
    w         classifier-free guidance scale: eps_cfg = eps(c_null) + w (eps(c) - eps(c_null))
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel

SAMPLERS = {"ddim": DDIMScheduler, "dpm-solver": DPMSolverMultistepScheduler}  # user-selectable samplers
StepCallback = Callable[[int, int, torch.Tensor], None]  # (step_index, timestep, x_t)

# Parameter groups, named as in ESD (Gandikota et al. 2023): which UNet weights a method trains.
PARAMETER_GROUPS = {
    "cross_attention": "cross-attention only (attn2): ESD-x; keeps unrelated concepts intact",
    "non_cross_attention": "everything except cross-attention: ESD-u; broad concepts",
    "all": "every UNet weight: ESD-a",
}


@dataclass
class SamplingDefaults:
    num_inference_steps: int = 25  # DDIM steps used for comparison grids
    guidance_scale: float = 3.0  # classifier-free guidance w
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_twin(cls, twin: dict, family: str = "") -> SamplingDefaults:
        """The defaults a model folder's twin.json names; the family's own defaults for the rest."""
        base = cls(*FAMILY_SAMPLING.get(family, ()))
        return cls(num_inference_steps=twin.get("num_inference_steps", base.num_inference_steps),
                   guidance_scale=twin.get("guidance_scale", base.guidance_scale))


# Sampling defaults of a family where they differ from the class defaults: (steps, guidance).
FAMILY_SAMPLING = {"stable-diffusion": (50, 7.5), "stable-diffusion-xl": (50, 5.0),  # the diffusers pipelines' own
                   "novel-view": (32, 3.0)}  # Zero123's 32 DDIM steps and guidance 3.0 (skip3d's paper)


def vocabulary_words(vocabulary: dict[str, list[str]]) -> list[str]:
    """A twin.json vocabulary as one list: objects, then attributes, then styles."""
    return [w for kind in ("objects", "attributes", "styles") for w in vocabulary.get(kind, [])]


def read_twin(path: Path) -> dict:
    """A model folder's optional twin.json (sampling defaults, bundled dataset); {} when absent."""
    file = Path(path) / "twin.json"
    return json.loads(file.read_text()) if file.is_file() else {}


class FamilyAdapter(ABC):
    """Base class of the model-family adapters. Subclasses load their components in ``__init__``."""

    family: str = ""
    conditioner_name: str = ""  # attribute holding the module that turns a prompt into c (text encoder, label table)
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler  # training-time forward process (q(x_t | x_0))
    sampling: SamplingDefaults

    def __init__(self, source: str, device: torch.device, dtype: torch.dtype):
        self.source = source
        self.device = device
        self.dtype = dtype

    # ---- concepts and conditions --------------------------------------------------------------
    @abstractmethod
    def concepts(self) -> list[str]:
        """Concepts this model knows by name (class names); empty for open-vocabulary families."""

    @abstractmethod
    def encode(self, concepts: Sequence[str]) -> torch.Tensor:
        """Conditions for concepts: (B, T, D) encoder hidden states."""

    @abstractmethod
    def null_condition(self, batch_size: int) -> torch.Tensor:
        """The unconditional condition c_null (B, T, D) used for classifier-free guidance."""

    @abstractmethod
    def validate_concept(self, concept: str) -> str:
        """Return the canonical concept or raise InputError saying what this model accepts."""

    # ---- the conditioner: prompts -> token embeddings -> conditions (differentiable; attacks, AdvUnlearn) -------------
    @property
    def conditioner(self) -> torch.nn.Module:
        """The module that turns a prompt into c: the text encoder (SD) or the label table (class-conditional)."""
        return getattr(self, self.conditioner_name)

    def with_conditioner(self, module: torch.nn.Module) -> FamilyAdapter:
        """A view of this adapter whose conditions come from ``module`` (an edited copy of the conditioner).

        The UNet, VAE, scheduler and evaluator are shared with this adapter; nothing is copied or changed.
        """
        view = copy.copy(self)
        setattr(view, self.conditioner_name, module)
        view._null = None  # the null condition depends on the conditioner
        return view

    def conditioned_by(self, edit) -> FamilyAdapter:
        """This adapter, or a view of it whose conditions come from an edited copy of the conditioner when
        ``edit`` changes it (AdvUnlearn trains the text encoder). The base weights are never touched."""
        _, part = edit.split(self.conditioner_name)
        if not part.params:
            return self
        conditioner = part.apply_to_copy(self.conditioner).eval()
        for p in conditioner.parameters():
            p.requires_grad_(False)
        return self.with_conditioner(conditioner)

    def edited(self, edit) -> tuple[FamilyAdapter, UNet2DConditionModel]:
        """The unlearned model of an :class:`~unlearning.edit.Edit`: (adapter for its conditions, edited UNet copy).
        For an edit of the UNet only, the adapter is this one; for no edit (None), this model itself (its own UNet,
        not a copy: the caller only samples from it)."""
        if edit is None:
            return self, self.unet
        unet_part, _ = edit.split(self.conditioner_name)
        return self.conditioned_by(edit), unet_part.apply_to_copy(self.unet).eval()

    def prompt_inputs(self, prompts: Sequence[str]) -> tuple[torch.Tensor, list[int]]:
        """(B, T, D) token embeddings of prompts as they enter the conditioner, and each prompt's token count
        (begin-of-sequence included; the positions after it are padding)."""
        raise NotImplementedError(f"{self.family} models do not expose their token embeddings")

    def encode_inputs(self, inputs: torch.Tensor, conditioner: torch.nn.Module | None = None) -> torch.Tensor:
        """Conditions c (B, T, D_c) from token embeddings (B, T, D), differentiable in the embeddings and in the
        conditioner's weights (``conditioner``: a trainable copy; default this adapter's own)."""
        raise NotImplementedError(f"{self.family} models do not expose their token embeddings")

    def insert_tokens(self, inputs: torch.Tensor, tokens: torch.Tensor, position: int = 1) -> torch.Tensor:
        """``tokens`` (B, k, D) inserted into token embeddings (B, T, D) at ``position`` (1: right after the
        begin-of-sequence token, UnlearnDiffAtk's prefix); a fixed-length family drops k trailing pads."""
        out = torch.cat([inputs[:, :position], tokens.to(inputs.dtype), inputs[:, position:]], dim=1)
        limit = self.max_tokens()
        return out[:, :limit] if limit else out

    def max_tokens(self) -> int | None:
        """The fixed length of a condition in tokens (SD: the tokenizer's 77), None where it may grow."""
        return None

    def vocabulary_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(V, D) embeddings of the tokens a prompt may be made of and their (V,) ids: the words of a text
        encoder, the rows of a label table (with the null label)."""
        raise NotImplementedError(f"{self.family} models do not expose their token embeddings")

    def decode_tokens(self, ids: Sequence[int]) -> str:
        """Token ids as text (for the adversarial prompt an attack found)."""
        raise NotImplementedError(f"{self.family} models do not expose their token embeddings")

    # ---- prompt sets and recognition (closed-vocabulary defaults; open-vocabulary families override) ----
    def prompt_for(self, concept: str) -> str:
        """The condition that shows a concept (for class labels: the label itself)."""
        return concept

    def forget_prompts(self, concept: str) -> list[str]:
        """Conditions whose samples should no longer show the concept (paraphrases where the family has them)."""
        return [concept]

    def default_retain(self, forget: Sequence[str]) -> list[str]:
        """Concepts to keep when the user names none: every known concept not forgotten."""
        return [c for c in self.concepts() if c not in forget]

    def scored_by_clip(self) -> bool:
        """True where forget / retain recognition and the CLIP score need CLIP weights (open vocabulary)."""
        return False

    @torch.no_grad()
    def recognises(self, targets: Sequence[str], images: torch.Tensor) -> torch.Tensor | None:
        """(B,) bool: does each image show its target concept, by the model's evaluator? None without one."""
        evaluator = getattr(self, "evaluator", None)
        if evaluator is None:
            return None
        names = self.concepts()
        pred = evaluator(images.to(evaluator.device)).argmax(1).cpu()
        return pred == torch.tensor([names.index(t) for t in targets])

    def can_recognise(self) -> bool:
        """Whether :meth:`recognises` can judge images here (without making any): an evaluator, or CLIP on disk."""
        return getattr(self, "evaluator", None) is not None

    def token_positions(self, text: str, include_last: bool = True) -> list[int]:
        """Positions of a condition's own tokens (everything after BOS for class labels)."""
        return list(range(1, self.null_condition(1).shape[1]))

    def token_ids(self, text: str | None) -> list[int]:
        """The condition's token sequence before padding, BOS first (class labels: [-1 = BOS, label];
        None: the null condition). Methods align an erased prompt with its anchor prompt by it (MACE)."""
        names = self.concepts()
        return [-1, names.index(text) if text is not None else len(names)]

    def concept_positions(self, prompt: str, concept: str, use_pooler: bool = False) -> list[int]:
        """Positions of ``concept``'s tokens inside ``prompt``'s condition; ``use_pooler`` adds the end-of-text
        positions (for class labels: the label token)."""
        return list(range(1, self.null_condition(1).shape[1]))

    def anchor_prompt(self, prompt: str, concept: str, anchor: str | None) -> str | None:
        """``prompt`` with ``concept`` swapped for ``anchor`` (None: removed; for class labels: the null condition)."""
        return anchor

    def encode_or_null(self, texts: Sequence[str | None]) -> torch.Tensor:
        """Conditions (B, T, D) where None stands for the null condition."""
        return torch.cat([self.null_condition(1) if t is None else self.encode([t]) for t in texts])

    def object_masks(self, concept: str, n: int, seed: int) -> torch.Tensor | None:
        """(n, 1, H, W) in [0, 1]: where the concept is in the images ``concept_data(concept, n, seed)`` returns,
        or None where the family cannot say (methods then use the whole image)."""
        return None

    @torch.no_grad()
    def token_embeddings(self, text: str | None, positions: Sequence[int]) -> torch.Tensor:
        """(len(positions), D) float32 rows of the condition of ``text`` (None: the null condition)."""
        cond = self.null_condition(1) if text is None else self.encode([text])
        return self.context(cond)[0, list(positions)].float()

    def context(self, cond: torch.Tensor) -> torch.Tensor:
        """The part of a condition the cross-attention layers read, (B, T, D): the encoder hidden states. The
        whole condition for most families; SDXL's also carries its pooled text embedding (see ``sdxl.py``)."""
        return cond

    def comparison_azimuths(self) -> list[float] | None:
        """Novel-view families: the delta azimuths each input view is compared at (a view plan); None for the others."""
        return None

    @torch.no_grad()
    def token_embeddings_many(self, texts: Sequence[str | None], positions: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """:meth:`token_embeddings` of many texts at once (families with a text encoder batch it)."""
        return [self.token_embeddings(t, p) for t, p in zip(texts, positions, strict=True)]

    def reference_images(self, targets: Sequence[str], n_per: int | None = None, seed: int = 0) -> torch.Tensor | None:
        """Real images of the targets in [0, 1] (for evaluator-FID), or None where the family ships none."""
        return None

    # ---- data ----------------------------------------------------------------------------------
    @abstractmethod
    def concept_data(self, concept: str, n: int, seed: int) -> torch.Tensor:
        """x_0 samples (n, C, H, W) of a concept: real data where the family ships it,
        otherwise images sampled from the original model (data-free methods)."""

    def captioned_data(self, concept: str, n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
        """``concept_data`` with a caption per sample (here the concept's plain prompt; families whose data
        has richer captions, such as the shapes twin's "a red star", override it)."""
        return self.concept_data(concept, n, seed), [self.prompt_for(concept)] * n

    # ---- images <-> model space ---------------------------------------------------------------
    def to_images(self, x0: torch.Tensor) -> torch.Tensor:
        """Model space -> images in [0, 1] (B, C, H, W), float32 on CPU."""
        return ((x0.float().clamp(-1, 1) + 1) / 2).cpu()

    # ---- noise prediction and sampling --------------------------------------------------------
    def frozen_copy_for_training(self) -> UNet2DConditionModel:
        """A float32 trainable copy of the base UNet; the base stays as it is."""
        unet = copy.deepcopy(self.unet)
        if unet.dtype != torch.float32:
            unet = unet.float()
        unet.train()
        for p in unet.parameters():
            p.requires_grad_(False)
        return unet

    def eps(self, unet: UNet2DConditionModel, x_t: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor) -> torch.Tensor:
        """eps(x_t, t, c) for a given UNet (the base, a frozen copy, or one being trained)."""
        dtype = next(unet.parameters()).dtype
        return unet(x_t.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample

    def guided_eps(self, unet, x_t, t, cond, guidance_scale: float) -> torch.Tensor:
        """eps_cfg = eps(c_null) + w (eps(c) - eps(c_null)); one batched forward pass."""
        if guidance_scale == 1.0:
            return self.eps(unet, x_t, t, cond)
        null = self.null_condition(x_t.shape[0])
        if null.shape[1] != cond.shape[1]:  # a condition with inserted tokens (an attack on a label model): two passes
            return self.eps(unet, x_t, t, null) + guidance_scale * (self.eps(unet, x_t, t, cond) - self.eps(unet, x_t, t, null))
        eps_null, eps_cond = self.eps(unet, torch.cat([x_t, x_t]), t, torch.cat([null, cond])).chunk(2)
        return eps_null + guidance_scale * (eps_cond - eps_null)

    @abstractmethod
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of x_t."""

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """x_T for each seed, drawn on CPU so the same seed gives the same noise on any device."""
        shape = self.sample_shape()
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.stack(noise).to(self.device, self.dtype)

    def make_sampler(self, num_inference_steps: int, sampler: str | None = None):
        """A fresh scheduler for one sampling call (schedulers hold state; never share one):
        DDIM (eta 0, the default) or DPM-Solver++ (multistep), from the model's own config."""
        cls = SAMPLERS.get(sampler or "ddim")
        if cls is None:
            from ..errors import InputError

            raise InputError(f"unknown sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}.")
        scheduler = cls.from_config(self.sampler_config())
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        return scheduler

    def sampler_config(self):
        return self.noise_scheduler.config

    @torch.no_grad()
    def denoise(
        self,
        x_t: torch.Tensor,
        cond: torch.Tensor,
        *,
        unet: UNet2DConditionModel | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        start_step: int = 0,
        stop_step: int | None = None,
        callback: StepCallback | None = None,
        sampler: str | None = None,
    ) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) from step ``start_step`` to ``stop_step`` (exclusive).

        With the defaults it runs the whole trajectory x_T -> x_0. ``callback`` sees every step, so a
        method can cache or resume trajectories.
        """
        unet = self.unet if unet is None else unet
        steps = num_inference_steps or self.sampling.num_inference_steps
        w = self.sampling.guidance_scale if guidance_scale is None else guidance_scale
        scheduler = self.make_sampler(steps, sampler)
        timesteps = scheduler.timesteps
        rule = self.sampling_rule(unet, cond)
        for i in range(start_step, len(timesteps) if stop_step is None else stop_step):
            t = timesteps[i]
            eps = self.guided_eps(unet, x_t, t, cond, w) if rule is None else rule(i, x_t, t, w)
            x_t = scheduler.step(eps.to(x_t.dtype), t, x_t).prev_sample
            if callback is not None:
                callback(i, int(t), x_t)
        return x_t

    def sampling_rule(self, unet: UNet2DConditionModel, cond: torch.Tensor) -> Callable | None:
        """The sampling-time rule an Edit attached to ``unet`` (see ``unlearning.edit.SAMPLING_RULE``), bound to this
        call's conditions: ``rule(step_index, x_t, t, guidance_scale) -> eps``; None for a plain UNet."""
        from ..edit import SAMPLING_RULE, sampling_rule_factory

        spec = getattr(unet, SAMPLING_RULE, None)
        return sampling_rule_factory(spec["method"])(self, unet, cond, spec) if spec else None

    def generate(
        self,
        concepts: Sequence[str],
        seeds: Sequence[int],
        *,
        unet: UNet2DConditionModel | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        sampler: str | None = None,
    ) -> torch.Tensor:
        """Images in [0, 1] (B, C, H, W) on CPU, one per (concept, seed) pair."""
        if len(concepts) != len(seeds):
            raise ValueError("generate() needs one seed per concept")
        x_T = self.initial_noise(seeds)
        x_0 = self.denoise(
            x_T, self.encode(concepts), unet=unet, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            sampler=sampler,
        )
        return self.to_images(x_0)

    # ---- parameters ----------------------------------------------------------------------------
    def parameter_names(self, unet: UNet2DConditionModel, group: str) -> list[str]:
        """Names of the UNet parameters in a group (see PARAMETER_GROUPS)."""
        if group not in PARAMETER_GROUPS:
            raise ValueError(f"unknown parameter group '{group}'; known: {', '.join(PARAMETER_GROUPS)}")
        names = [n for n, _ in unet.named_parameters()]
        if group == "all":
            return names
        is_xattn = [".attn2." in n for n in names]
        if group == "cross_attention":
            return [n for n, x in zip(names, is_xattn, strict=True) if x]
        return [n for n, x in zip(names, is_xattn, strict=True) if not x]

    def describe(self) -> dict:
        """What the run card records about the model."""
        return {
            "source": self.source,
            "family": self.family,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "unet_parameters": sum(p.numel() for p in self.unet.parameters()),
        }
