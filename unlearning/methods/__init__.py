"""The method registry: one place that maps a method name to its settings and its function.

The CLI, the UI and the hosted profile all read allowed names from here, so they cannot disagree.
``tuned`` holds settings tuned for a given embedded twin (model id -> values); every other model
starts from the dataclass defaults, which are the paper's values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from . import esd, finetune, gradient_ascent, gradient_ascent_lm, resalign, rmu, salun, scapre, uce, vdu
from .base import build_settings, settings_fields


@dataclass(frozen=True)
class MethodSpec:
    name: str
    label: str
    summary: str
    citation: str
    settings_cls: type
    unlearn: Callable
    families: tuple[str, ...] = ("class-conditional", "stable-diffusion")
    tuned: dict[str, dict[str, Any]] = field(default_factory=dict)
    uses_anchor: bool = False
    variants: dict[str, MethodSpec] = field(default_factory=dict)  # family -> the same method written for that family

    def for_family(self, family: str) -> MethodSpec:
        """The implementation of this method for a model family (itself, or its variant for that family)."""
        if family in self.families:
            return self
        if family in self.variants:
            return self.variants[family]
        raise InputError(f"{self.label} does not support {family} models yet.")

    def supports(self, family: str) -> bool:
        return family in self.families or family in self.variants

    def defaults(self, model_id: str | None = None) -> dict[str, Any]:
        """The values a run starts from: the paper's, with the twin's tuned values over them."""
        paper = {f.name: f.default for f in settings_fields(self.settings_cls)}
        return {**paper, **self.tuned.get(model_id or "", {})}

    def settings(self, model_id: str | None, overrides: dict[str, Any] | None = None) -> Any:
        return build_settings(self.settings_cls, self.tuned.get(model_id or "", {}), overrides or {})

    def describe(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """Per field: name, type, paper default, tuned value for this model, help, bounds."""
        tuned = self.tuned.get(model_id or "", {})
        rows = []
        for f in settings_fields(self.settings_cls):
            rows.append({
                "name": f.name,
                "type": f.type if isinstance(f.type, str) else f.type.__name__,
                "paper": f.default,
                "value": tuned.get(f.name, f.default),
                "tuned": f.name in tuned,
                **{k: v for k, v in f.metadata.items() if v is not None},
            })
        return rows


# the facts-lm twin has 4 layers where Zephyr has 32: RMU's layer 7 of 32 and its update layers l-2..l, scaled
LM_TWIN_LAYERS: dict[str, Any] = {"layer": 1, "update_layers": "0,1"}

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in [
        MethodSpec(
            name="esd",
            label="ESD (erase with negative guidance)",
            summary="Teaches the model to predict, for the concept, what a negatively guided copy of itself predicts. "
            "Data-free: it needs no images of the concept.",
            citation="Gandikota et al., Erasing Concepts from Diffusion Models, ICCV 2023",
            settings_cls=esd.ESDSettings,
            unlearn=esd.unlearn,
            tuned={"digits": {"iterations": 80, "lr": 1e-3, "ddim_steps": 25, "batch_size": 2, "start_guidance": 2.0},
                   "shapes-sd": {"iterations": 60, "lr": 1e-3, "ddim_steps": 25, "batch_size": 2, "start_guidance": 3.0}},
            uses_anchor=True,
        ),
        MethodSpec(
            name="gradient_ascent",
            label="Gradient ascent (NegGrad / NegGrad+)",
            summary="Raises the denoising loss on images of the concept; an optional retain term keeps the rest. "
            "Unbounded: too many steps break the whole model.",
            citation="Baseline; e.g. Thudi et al. 2022, Fan et al. (SalUn) ICLR 2024",
            settings_cls=gradient_ascent.GradientAscentSettings,
            unlearn=gradient_ascent.unlearn,
            tuned={"digits": {"iterations": 40, "lr": 1e-3, "retain_weight": 1.0, "batch_size": 16, "group": "cross_attention"}},
            variants={"causal-lm": MethodSpec(
                name="gradient_ascent",
                label="Gradient ascent (GA / NegGrad+), language model",
                summary="Raises the next-token loss on the forget domain's text; an optional retain term (NegGrad+) keeps "
                "training on the retain domain's text. Unbounded: too many steps break the whole model.",
                citation="Baseline; NegGrad+: Kurmanji et al., Towards Unbounded Machine Unlearning, NeurIPS 2023",
                settings_cls=gradient_ascent_lm.LMGradientAscentSettings,
                unlearn=gradient_ascent_lm.unlearn,
                families=("causal-lm",),
                tuned={"facts-lm": {"update_layers": LM_TWIN_LAYERS["update_layers"]}},
            )},
        ),
        MethodSpec(
            name="rmu",
            label="RMU (representation misdirection)",
            summary="At one layer, pushes the hidden states of forget-domain text to a fixed random direction of large norm "
            "and holds those of retain-domain text where the original has them; only a few MLP output projections train.",
            citation="Li et al., The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning, ICML 2024",
            settings_cls=rmu.RMUSettings,
            unlearn=rmu.unlearn,
            families=("causal-lm",),
            tuned={"facts-lm": {**LM_TWIN_LAYERS}},
        ),
        MethodSpec(
            name="finetune",
            label="Fine-tuning on retained data",
            summary="Keeps training on the other concepts only (optionally teaching the concept's label "
            "to draw an anchor instead). Shows how much forgetting plain training gives.",
            citation="Baseline; e.g. Warnecke et al. 2023, Fan et al. (SalUn) ICLR 2024",
            settings_cls=finetune.FineTuneSettings,
            unlearn=finetune.unlearn,
            tuned={"digits": {"iterations": 100, "lr": 3e-4, "batch_size": 32}},
            uses_anchor=True,
        ),
        MethodSpec(
            name="salun",
            label="SalUn (saliency mask + random labels)",
            summary="Trains only the weights the forget loss depends on most, teaching the concept's label to "
            "predict what another, random label predicts on the same images; retained data keeps the rest.",
            citation="Fan et al., SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency, ICLR 2024",
            settings_cls=salun.SalUnSettings,
            unlearn=salun.unlearn,
            tuned={twin: {"iterations": 40, "lr": 5e-4, "retain_weight": 1.0, "batch_size": 16} for twin in ("digits", "shapes-sd")},
        ),
        MethodSpec(
            name="vdu",
            label="VDU (variational diffusion unlearning)",
            summary="Gradient ascent on a small subset of the concept's images, held near the original weights by "
            "a Gaussian anchor whose per-weight spread comes from the model's own training checkpoints. No retain data.",
            citation="Panda et al., Variational Diffusion Unlearning, arXiv 2510.04058 (TMLR 2026)",
            settings_cls=vdu.VDUSettings,
            unlearn=vdu.unlearn,
            # shapes-sd: no shipped snapshots (made by continued training); 10 steps barely forget, 20 wreck the rest
            tuned={"digits": {"iterations": 15, "batch_size": 64}, "shapes-sd": {"iterations": 15, "batch_size": 16}},
        ),
        MethodSpec(
            name="resalign",
            label="ResAlign (unlearning that survives fine-tuning)",
            summary="Gradient ascent on the concept plus distillation to the original on the rest, trained so the concept "
            "stays gone after simulated downstream fine-tunes (implicit-function hypergradient, many fine-tuning setups). "
            "Rank-4 LoRA on the attention projections, merged at the end.",
            citation="Li et al., Towards Resilient Safety-driven Unlearning for Diffusion Models against Downstream "
            "Fine-tuning, NeurIPS 2025",
            settings_cls=resalign.ResAlignSettings,
            unlearn=resalign.unlearn,
            # twin scale: simulated fine-tunes at the relearning test's learning rates (5e-4 on digits), fewer and shorter runs.
            # ESD's target as L_h: with gradient ascent (lr 1e-3) the digit did not go at all (forget 1.00 -> 1.00); this
            # forgets on digits (1.00 -> 0.06) and shapes-sd "star" (0.75 -> 0.04, retain 0.93; README).
            tuned={twin: {"iterations": 40, "lr": 1e-2, "objective": "esd", "negative_guidance": 2.0, "batch_size": 16,
                          "data_size": 32, "ft_lrs": "1e-3,5e-4,1e-4", "ft_steps": "2,5,10", "ft_batch_size": 8}
                   for twin in ("digits", "shapes-sd")},
        ),
        MethodSpec(
            name="uce",
            label="UCE (closed-form cross-attention edit)",
            summary="One linear solve rewrites every cross-attention key / value projection so the erased words read as "
            "their anchor (or the empty prompt) while preserved concepts keep their outputs. No data, no training; seconds.",
            citation="Gandikota et al., Unified Concept Editing in Diffusion Models, WACV 2024",
            settings_cls=uce.UCESettings,
            unlearn=uce.unlearn,
            uses_anchor=True,
        ),
        MethodSpec(
            name="scapre",
            label="ScaPre (scalable multi-concept closed form)",
            summary="UCE's closed form with trace-normalised terms and a capped update spectrum (so many concepts do not "
            "swamp preservation), retraction from the preserved subspace, and per-channel information gains.",
            citation="ScaPre (seed 004; abstract only), designed here as an extension of UCE; see unlearning/methods/scapre.py",
            settings_cls=scapre.ScaPreSettings,
            unlearn=scapre.unlearn,
            uses_anchor=True,
            # tuned on a held-out split (bench/tune_scapre.py: concept order seed 1; the scaling bench uses seed 0)
            tuned={"shapes-sd": {"preserve_scale": 0.4}},
        ),
    ]
}


def get_method(name: str) -> MethodSpec:
    key = (name or "").strip().lower().replace("-", "_")
    if key not in METHODS:
        raise InputError(f"unknown method '{name}'; available: {', '.join(METHODS)}.")
    return METHODS[key]


__all__ = ["METHODS", "MethodSpec", "get_method"]
