"""CLIP-based metrics for real Stable Diffusion: CLIP score and zero-shot concept recognition.

They need CLIP weights on disk. ``clip_status()`` looks, without downloading, for a local folder named
by ``UNLEARNING_CLIP`` or for ``openai/clip-vit-large-patch14`` (then ``-base-patch32``) in the local
Hugging Face cache; when none is there the metrics are "unavailable" with how to enable them, and
no number is ever computed with random weights.

    CLIP score      CLIPScore's definition: 100 * max(cos(image, prompt), 0), mean over images
    recognition     zero-shot: an image shows concept c if its similarity to "a photo of c" beats
                    its similarity to every neutral alternative (retained concepts, "a photo")
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .image import MetricStatus, MetricUnavailable

CANDIDATES = ("openai/clip-vit-large-patch14", "openai/clip-vit-base-patch32")
ENV_VAR = "UNLEARNING_CLIP"


def _cached_snapshot(repo: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo, "config.json")
    weights = try_to_load_from_cache(repo, "model.safetensors")
    if isinstance(config, str) and isinstance(weights, str):
        return Path(config).parent
    return None


def clip_location() -> Path | None:
    folder = os.environ.get(ENV_VAR, "").strip()
    if folder:
        path = Path(folder).expanduser()
        return path if (path / "config.json").is_file() else None
    for repo in CANDIDATES:
        if (snap := _cached_snapshot(repo)) is not None:
            return snap
    return None


def clip_status() -> MetricStatus:
    if clip_location() is not None:
        return MetricStatus(True, "", "")
    if os.environ.get(ENV_VAR, "").strip():
        return MetricStatus(False, f"{ENV_VAR} points at a folder without a CLIP config.json",
                            f"set {ENV_VAR} to a folder saved by CLIPModel.save_pretrained (safetensors)")
    return MetricStatus(False, "no CLIP weights in the local Hugging Face cache",
                        f"on a connected machine: huggingface-cli download {CANDIDATES[0]} (or set {ENV_VAR}=<folder>)")


@functools.lru_cache(maxsize=1)
def _load(path: str):
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(path, use_safetensors=True, local_files_only=True).eval()
    return model, CLIPProcessor.from_pretrained(path, local_files_only=True)


def _features(out) -> torch.Tensor:
    """Projected features: a tensor (transformers 4) or the output's pooler_output (transformers 5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def _embed(images: torch.Tensor, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    path = clip_location()
    if path is None:
        raise MetricUnavailable("CLIP", clip_status())
    model, processor = _load(str(path))
    batch = processor(text=list(texts), images=[im.permute(1, 2, 0).numpy() for im in images.float().cpu()],
                      return_tensors="pt", padding=True, do_rescale=False, truncation=True)
    img = _features(model.get_image_features(pixel_values=batch["pixel_values"]))
    txt = _features(model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))
    return torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)


def clip_score(images: torch.Tensor, prompts: Sequence[str]) -> float:
    """CLIPScore's definition (Hessel et al. 2021): mean 100 * max(cos(image, prompt), 0).

    Computed here rather than with torchmetrics' CLIPScore: torchmetrics 1.9 normalises the result of
    ``get_image_features``, which transformers 5 returns as a ModelOutput, so it fails with the pinned
    versions (measured); the definition is one line.
    """
    img, txt = _embed(images, prompts)
    return float((100 * (img * txt).sum(-1).clamp_min(0)).mean())


def zero_shot_hits(images: torch.Tensor, targets: Sequence[str], alternatives: Sequence[str]) -> torch.Tensor:
    """(B,) bool: image i is closer to "a photo of {targets[i]}" than to every alternative."""
    labels = list(dict.fromkeys([*targets, *alternatives, ""]))
    img, txt = _embed(images, [f"a photo of {c}".strip() for c in labels])
    sims = img @ txt.T  # (B, L)
    best = sims.argmax(1)
    return torch.tensor([labels[int(b)] == t for b, t in zip(best, targets, strict=True)])
