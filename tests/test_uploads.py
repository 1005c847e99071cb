"""Uploads (unlearning.images.load_upload): non-images, huge files and images, decompression bombs and odd
modes are refused or normalised to RGB with a note, within the hosted profile's limits."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from unlearning.errors import InputError
from unlearning.hosting.profile import Limits
from unlearning.images import load_upload

LIMITS = Limits(max_image_pixels=256 * 256, max_upload_bytes=200_000)


def png_bytes(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kw)
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height; its data holds only the first rows (a decoder that
    trusted the header would allocate width x height bytes before finding out)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = zlib.compress(b"\0" * (width + 1) * 4, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def test_an_rgb_png_from_a_path_passes_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = tmp_path / "ok.png"
    Image.fromarray(arr).save(path)
    image, notes = load_upload(path, LIMITS)
    assert image.mode == "RGB" and image.size == (30, 20) and notes == []
    assert np.array_equal(np.asarray(image), arr)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"%PDF-1.4 not an image at all", "is not an image"),
        (b"", "is empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not an image"),  # a PNG signature and garbage
        (b"x" * 300_000, "accepts images up to"),
    ],
    ids=["pdf", "empty", "broken_png", "too_many_bytes"],
)
def test_non_images_and_huge_files_are_refused(data, fragment):
    with pytest.raises(InputError, match=fragment):
        load_upload(data, LIMITS)


def test_too_many_pixels_and_a_decompression_bomb_are_refused_from_the_header():
    with pytest.raises(InputError, match="at most 65,536"):
        load_upload(png_bytes(Image.new("L", (300, 300))), LIMITS)
    bomb = bomb_png(40_000, 40_000)  # 1.6 G pixels declared in a few kB
    assert len(bomb) < LIMITS.max_upload_bytes
    with pytest.raises(InputError, match=r"40000 x 40000|decompression bomb"):
        load_upload(bomb, LIMITS)


def test_truncated_file_is_a_clear_error():
    data = png_bytes(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(InputError, match="could not be decoded"):
        load_upload(data[: len(data) // 2], LIMITS)


@pytest.mark.parametrize(
    ("image", "note"),
    [
        (Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "composited onto white"),
        (Image.new("LA", (8, 8), (0, 0)), "composited onto white"),
        (Image.new("L", (8, 8), 128), "converted from L"),
        (Image.new("P", (8, 8), 3), "converted from P"),
        (Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "converted from CMYK"),
        (Image.new("I;16", (8, 8), 40000), "rescaled to 8 bits"),
    ],
    ids=["rgba", "la", "grey", "palette", "cmyk", "16bit"],
)
def test_other_modes_become_rgb_with_a_note(image, note):
    out, notes = load_upload(image, LIMITS)
    assert out.mode == "RGB" and out.size == image.size
    assert any(note in n for n in notes), notes
    if image.mode == "RGBA":  # fully transparent red is white, not red or black
        assert out.getpixel((0, 0)) == (255, 255, 255)


def test_animation_uses_the_first_frame_and_exif_rotation_is_applied():
    frames = [Image.new("RGB", (6, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out, notes = load_upload(buf.getvalue(), LIMITS)
    assert out.getpixel((0, 0))[0] > 200 and any("first frame" in n for n in notes)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise
    buf = io.BytesIO()
    Image.new("RGB", (6, 4)).save(buf, format="JPEG", exif=exif)
    out, notes = load_upload(buf.getvalue(), LIMITS)
    assert out.size == (4, 6) and any("EXIF" in n for n in notes)


def test_nothing_uploaded():
    with pytest.raises(InputError, match="no image was uploaded"):
        load_upload(None, LIMITS)
