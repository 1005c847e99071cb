"""A tiny "text encoder" for class labels, so class-conditional twins condition through cross-attention.

Real Stable Diffusion feeds CLIP token embeddings (B, 77, 768) into every cross-attention layer.
The digits twin does the same with two tokens: a learned begin-of-sequence token (as CLIP's BOS,
which every prompt shares) followed by the label's own embedding. The extra index ``num_classes``
is the *null label* used for classifier-free guidance, as the empty prompt is for SD.
Because the label reaches the UNet only through cross-attention, cross-attention methods
(ESD-x, UCE) act on it exactly as they act on a word in SD.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class LabelEncoder(ModelMixin, ConfigMixin):
    """Maps labels (B,) to encoder hidden states (B, 2, hidden_size): [BOS, label]."""

    @register_to_config
    def __init__(self, num_classes: int = 10, hidden_size: int = 64, class_names: list[str] | None = None):
        super().__init__()
        self.bos = nn.Parameter(torch.randn(1, 1, hidden_size) * 0.02)
        self.embedding = nn.Embedding(num_classes + 1, hidden_size)  # last row: null label
        self.norm = nn.LayerNorm(hidden_size)

    @property
    def null_label(self) -> int:
        return self.config.num_classes

    def tokens(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, 2, D) token embeddings [BOS, label] before the norm (attacks insert tokens here)."""
        label = self.embedding(labels)[:, None, :]  # (B, 1, D)
        bos = self.bos.expand(labels.shape[0], -1, -1)  # (B, 1, D)
        return torch.cat([bos, label], dim=1)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.norm(self.tokens(labels))  # (B, 2, D)
