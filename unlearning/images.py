"""Image helpers for display and files: tensors in [0, 1] -> PNG-ready PIL images and grids."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image


def to_pil(image: torch.Tensor, min_size: int = 0) -> Image.Image:
    """(C, H, W) in [0, 1] -> PIL, upscaled by an integer factor (nearest: no invented detail)."""
    arr = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    factor = max(1, -(-min_size // max(pil.size))) if min_size else 1
    return pil.resize((pil.width * factor, pil.height * factor), Image.NEAREST) if factor > 1 else pil


def pair_grid(original: Sequence[torch.Tensor], unlearned: Sequence[torch.Tensor], columns: int,
              tile: int = 64, gap: int = 4, band: int = 10) -> Image.Image:
    """Original row above unlearned row, for each block of ``columns`` samples.

    Rows come in pairs (original, unlearned) made from the same seeds; a wider band separates pairs.
    """
    n = len(original)
    blocks = max(1, -(-n // columns))
    width = columns * tile + (columns - 1) * gap
    height = blocks * (2 * tile + gap) + (blocks - 1) * band
    canvas = Image.new("RGB", (width, height), (200, 200, 200))
    for i in range(n):
        block, col = divmod(i, columns)
        x = col * (tile + gap)
        y = block * (2 * tile + gap + band)
        for row, img in enumerate((original[i], unlearned[i])):
            canvas.paste(to_pil(img, tile).convert("RGB").resize((tile, tile), Image.NEAREST), (x, y + row * (tile + gap)))
    return canvas


def side_by_side(a: torch.Tensor, b: torch.Tensor, size: int = 256) -> tuple[Image.Image, Image.Image]:
    """A pair for gr.ImageSlider, upscaled to ``size`` with nearest neighbours."""
    return to_pil(a, size).convert("RGB"), to_pil(b, size).convert("RGB")

