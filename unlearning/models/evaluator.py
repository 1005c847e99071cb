"""Small CNN classifiers: the twins' *evaluators* (they measure forget / retain scores).

An evaluator is trained on the same data generator as its twin and never edited by any method.
Its penultimate features define **evaluator-FID** (FID computed on these features rather than on
Inception's; named so everywhere, never called plain FID).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class ImageClassifier(ModelMixin, ConfigMixin):
    """conv(3x3)-GN-SiLU stages with stride-2 downsampling, global average pool, linear head.

    Inputs are images in [0, 1], shape (B, C, H, W). With ``heads`` ([name, class names] pairs, in output
    order) the outputs are several classifiers sharing one body (the shapes evaluator: shape and colour).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: tuple[int, ...] = (32, 64, 128),
        feature_dim: int = 64,
        class_names: list[str] | None = None,
        heads: list[list] | None = None,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [nn.Conv2d(c, w, 3, stride=stride, padding=1), nn.GroupNorm(8, w), nn.SiLU()]
            layers += [nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(8, w), nn.SiLU()]
            c = w
        self.body = nn.Sequential(*layers)
        self.features_head = nn.Linear(c, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, feature_dim); images in [0, 1]."""
        h = self.body(images * 2 - 1).mean(dim=(2, 3))  # (B, C)
        return F.silu(self.features_head(h))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # (B, num_classes) logits

    def head_classes(self) -> list[tuple[str, list[str]]]:
        """[(head name, class names)] in output order. Stored as a list of pairs, not a dict: configs are
        saved with sorted keys, which would silently reorder a dict's heads against the weights."""
        return [(name, list(names)) for name, names in (self.config.heads or [])]

    def head_logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head, e.g. {"shape": (B, 8), "colour": (B, 8)}: a multi-head evaluator is one
        linear layer whose outputs are split in the order of ``heads``; without heads, {"class": logits}."""
        logits = self(images)
        if not self.config.heads:
            return {"class": logits}
        out, start = {}, 0
        for name, names in self.head_classes():
            out[name] = logits[:, start : start + len(names)]
            start += len(names)
        return out
