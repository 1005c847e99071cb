"""Class-conditional diffusion family (the digits twin, or any folder of the same layout).

Folder layout (diffusers' ``save_pretrained`` per component, safetensors only)::

    model_index.json          components, as a hub snapshot would list them
    twin.json                 optional: sampling defaults and the bundled dataset's name
    unet/                     UNet2DConditionModel (label tokens through cross-attention)
    label_encoder/            LabelEncoder: label -> [BOS, label] tokens; index num_classes = null
    scheduler/                DDPMScheduler config (training forward process; DDIM for sampling)
    evaluator/                optional ImageClassifier used for forget / retain scores
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from ..errors import InputError
from .base import FamilyAdapter, SamplingDefaults, read_twin
from .label_encoder import LabelEncoder


class ClassConditionalAdapter(FamilyAdapter):
    family = "class-conditional"

    def __init__(self, path: str | Path, device: torch.device, dtype: torch.dtype = torch.float32):
        super().__init__(str(path), device, dtype)
        path = Path(path)
        load = {"use_safetensors": True, "torch_dtype": dtype}
        self.unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **load).to(device).eval()
        self.label_encoder = LabelEncoder.from_pretrained(path, subfolder="label_encoder", **load).to(device).eval()
        self.noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        for p in [*self.unet.parameters(), *self.label_encoder.parameters()]:
            p.requires_grad_(False)
        self.twin = read_twin(path)
        self.sampling = SamplingDefaults.from_twin(self.twin)
        names = self.label_encoder.config.class_names
        self.class_names: list[str] = list(names) if names else [str(i) for i in range(self.label_encoder.config.num_classes)]
        self.evaluator = None
        if (path / "evaluator").exists():
            from .evaluator import ImageClassifier

            self.evaluator = ImageClassifier.from_pretrained(path, subfolder="evaluator", use_safetensors=True).to(device).eval()
            for p in self.evaluator.parameters():
                p.requires_grad_(False)
        self._dataset_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    # ---- concepts --------------------------------------------------------------------------------
    def concepts(self) -> list[str]:
        return list(self.class_names)

    def validate_concept(self, concept: str) -> str:
        text = str(concept).strip()
        if not text:
            raise InputError("the concept is empty: pick one of this model's classes, e.g. " + ", ".join(self.class_names[:3]) + ".")
        if text not in self.class_names:
            raise InputError(
                f"'{text}' is not a class of this model; it knows: {', '.join(self.class_names)}."
            )
        return text

    def label_of(self, concept: str) -> int:
        return self.class_names.index(self.validate_concept(concept))

    def encode_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return self.label_encoder(labels.to(self.device)).to(self.dtype)  # (B, 2, D)

    @torch.no_grad()
    def encode(self, concepts: Sequence[str]) -> torch.Tensor:
        labels = torch.tensor([self.label_of(c) for c in concepts], dtype=torch.long)
        return self.encode_labels(labels)

    @torch.no_grad()
    def null_condition(self, batch_size: int) -> torch.Tensor:
        labels = torch.full((batch_size,), self.label_encoder.null_label, dtype=torch.long)
        return self.encode_labels(labels)

    def sample_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        return (self.unet.config.in_channels, size, size)

    # ---- data --------------------------------------------------------------------------------------
    def real_dataset(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(images in [0, 1], labels) of the bundled dataset named in twin.json, if any."""
        if self._dataset_cache is None and self.twin.get("dataset") == "sklearn-digits":
            from ..datasets.digits import load_digit_images

            size = self.sample_shape()[-1]
            self._dataset_cache = load_digit_images(size)
        return self._dataset_cache

    def reference_images(self, targets: Sequence[str], n_per: int | None = None, seed: int = 0) -> torch.Tensor | None:
        """Every bundled real image of the target classes (n_per is ignored: the dataset is small)."""
        data = self.real_dataset()
        if data is None:
            return None
        images, labels = data
        return images[torch.isin(labels, torch.tensor([self.label_of(t) for t in targets]))]

    def concept_data(self, concept: str, n: int, seed: int) -> torch.Tensor:
        label = self.label_of(concept)
        data = self.real_dataset()
        if data is not None:
            images, labels = data
            pool = images[labels == label]
            g = torch.Generator().manual_seed(seed)
            idx = torch.randint(len(pool), (n,), generator=g)
            return (pool[idx] * 2 - 1).to(self.device, self.dtype)
        # No data ships with this model: sample it from the original model (data-free).
        seeds = [seed * 100_003 + i for i in range(n)]
        x0 = self.denoise(self.initial_noise(seeds), self.encode([concept] * n))
        return x0

    def describe(self) -> dict:
        info = super().describe()
        info["classes"] = self.class_names
        info["sampling"] = {"num_inference_steps": self.sampling.num_inference_steps, "guidance_scale": self.sampling.guidance_scale}
        return info
