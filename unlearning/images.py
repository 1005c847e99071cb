"""Image helpers for display and files: tensors in [0, 1] -> PNG-ready PIL images and grids; checked uploads."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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



# ---- uploads ---------------------------------------------------------------------------------------------

UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # what PIL may decode from a user's upload


def load_upload(source: str | Path | bytes | Image.Image | None, limits=None) -> tuple[Image.Image, list[str]]:
    """A user's uploaded image as RGB, checked against the hosted profile's limits, and notes on what was changed.

    Checks, in this order, before any pixel is decoded: the file's size (``limits.max_upload_bytes``),
    that it is an image in one of :data:`UPLOAD_FORMATS`, and its width x height
    (``limits.max_image_pixels``; a decompression bomb is refused from its header). Then the image is
    decoded and normalised, each step noted: the first frame of an animation, the EXIF orientation,
    transparency composited on white, other modes (palette, greyscale, CMYK, 16-bit) converted to RGB.

    Args:
        source: a file path, the file's bytes, or an already decoded PIL image (size still checked).
        limits: ``unlearning.hosting.profile.Limits``; default: the hosted profile's.

    Raises:
        InputError: nothing given, too large, not an image, an unsupported format, or too many pixels.
    """
    import io

    from PIL import ImageOps, UnidentifiedImageError

    from .errors import InputError

    if limits is None:
        from .hosting.profile import get_profile

        limits = get_profile().limits
    if source is None or (isinstance(source, str) and not source.strip()):
        raise InputError("no image was uploaded; choose an image file (PNG, JPEG, WebP).")
    notes: list[str] = []
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, bytes):
            size, stream, name = len(source), io.BytesIO(source), "the upload"
        else:
            path = Path(source)
            if not path.is_file():
                raise InputError(f"the uploaded file '{path.name}' is missing; upload it again.")
            size, stream, name = path.stat().st_size, path, f"'{path.name}'"
        if size > limits.max_upload_bytes:
            raise InputError(f"{name} is {size / 2**20:.1f} MiB; this instance accepts images up to "
                             f"{limits.max_upload_bytes / 2**20:.1f} MiB.")
        if size == 0:
            raise InputError(f"{name} is empty; upload an image file (PNG, JPEG, WebP).")
        try:
            # Image.open reads the header only: the size check below happens before any pixel is decoded.
            image = Image.open(stream, formats=list(UPLOAD_FORMATS))
        except UnidentifiedImageError:
            raise InputError(f"{name} is not an image PIL can read as {', '.join(UPLOAD_FORMATS)}; "
                             "upload a PNG, JPEG or WebP file.") from None
        except Image.DecompressionBombError:
            raise InputError(f"{name} declares an enormous size (a decompression bomb?); refused.") from None
    pixels = image.width * image.height
    if pixels > limits.max_image_pixels:
        raise InputError(f"the image is {image.width} x {image.height} = {pixels:,} pixels; this instance accepts at most "
                         f"{limits.max_image_pixels:,} (e.g. {_side(limits.max_image_pixels)} x {_side(limits.max_image_pixels)}). "
                         "Resize it and upload it again.")
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
        notes.append(f"an animation of {image.n_frames} frames: the first frame is used.")
    try:
        image.load()
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
        raise InputError(f"the image could not be decoded ({exc}); it may be truncated or corrupt. Upload it again.") from None
    oriented = ImageOps.exif_transpose(image)
    if oriented is not None and oriented.size != image.size:
        notes.append("rotated upright from its EXIF orientation.")
        image = oriented
    mode = image.mode
    if mode == "RGB":
        return image.copy() if image is source else image, notes
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        notes.append(f"transparency ({mode}) composited onto white.")
        return Image.alpha_composite(white, rgba).convert("RGB"), notes
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit or float greyscale: PIL's convert would clip it
        import numpy as np

        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = ((arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)).round().astype(np.uint8)
        notes.append(f"{mode} greyscale rescaled to 8 bits and converted to RGB.")
        return Image.fromarray(scaled).convert("RGB"), notes
    notes.append(f"converted from {mode} to RGB.")
    return image.convert("RGB"), notes


def _side(pixels: int) -> int:
    return int(pixels**0.5)
