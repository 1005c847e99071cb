"""The handwritten digits of scikit-learn (1,797 images of 8x8, bundled with the package: no download), as the
digits twin and its evaluator see them: upsampled to 16x16 in [0, 1], with a fixed train / test split."""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLASS_NAMES = [str(i) for i in range(10)]
IMAGE_SIZE = 16
SPLIT_SEED = 1234  # the train / test split of the twin, its evaluator and the classifier family


def load_digit_images(size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as images in [0, 1], (N, 1, size, size), and their labels (N,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return images, torch.tensor(digits.target, dtype=torch.long)


def split_indices(n: int, seed: int = SPLIT_SEED, test_fraction: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * test_fraction))
    return perm[n_test:], perm[:n_test]
