"""Pairwise image metrics: SSIM, PSNR (torchmetrics) and LPIPS (the `lpips` package, AlexNet).

All functions take two float tensors ``a`` and ``b`` of shape (B, C, H, W) with values in [0, 1]
(the raw model output, before any display encoding) and compare ``a[i]`` with ``b[i]``.
The scalar functions return the mean over the B pairs; the ``*_per_pair`` functions return the
B values, for intervals over seeds.

Conventions, so that every number shown can be read the same way:

- **SSIM** (Wang et al. 2004), ``data_range=1.0``. Images whose shorter side is at least
  ``SSIM_GAUSSIAN_MIN_SIDE`` (32) px use the paper's 11x11 Gaussian window (sigma 1.5). Smaller
  images (the 16x16 twins) use a 7x7 uniform window, scikit-image's default, because an 11x11
  window would cover most of a 16 px image; below 7 px the largest odd window that fits is used.
  Note: torchmetrics ignores ``kernel_size`` when ``gaussian_kernel=True`` (the Gaussian size
  comes from sigma), so the small-image window is requested as a uniform kernel.
- **PSNR**, ``data_range=1.0``, computed per image pair and then averaged (the usual convention in
  restoration papers, not the PSNR of the pooled MSE). Identical images have infinite PSNR; every
  per-pair value is capped at ``PSNR_CAP_DB`` (100 dB, i.e. MSE 1e-10, below float32 resolution
  for [0, 1] images), so a shown 100.0 means "identical".
- **LPIPS** v0.1 with the AlexNet trunk and the linear layers shipped inside the ``lpips`` wheel.
  The trunk is torchvision's ImageNet AlexNet, which must already be in the torch hub cache:
  nothing is downloaded here. When it is missing, :func:`lpips_distance` raises
  :class:`MetricUnavailable` and :func:`lpips_status` says why and how to fetch it. Grey images are
  repeated to 3 channels; images whose shorter side is below ``LPIPS_MIN_SIDE`` (64) px are
  upsampled bilinearly (``align_corners=False``) so that the shorter side is 64 px, because
  AlexNet's stride-4 stem and two max-pools leave no spatial extent on a 16x16 input.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchvision.models import AlexNet_Weights

from ..errors import InputError, UnlearningError

logger = logging.getLogger(__name__)

PSNR_CAP_DB = 100.0  # PSNR reported for identical pairs (and any pair above it)
SSIM_GAUSSIAN_MIN_SIDE = 32  # shorter side from which SSIM uses the paper's 11x11 Gaussian window
SSIM_SMALL_WINDOW = 7  # uniform window for smaller images (scikit-image's default)
LPIPS_MIN_SIDE = 64  # shorter side LPIPS inputs are upsampled to, at least
ALEXNET_WEIGHTS_URL = AlexNet_Weights.IMAGENET1K_V1.url  # .../alexnet-owt-7be5be79.pth


@dataclass(frozen=True)
class MetricStatus:
    """Whether a metric that needs pretrained weights can be computed on this machine."""

    available: bool
    reason: str  # short, shown next to "unavailable"; "" when available
    how_to_enable: str  # what the user can do; "" when available


class MetricUnavailable(UnlearningError):
    """A metric cannot be computed here (missing weights or package); the message says how to enable it."""

    def __init__(self, metric: str, status: MetricStatus) -> None:
        super().__init__(f"{metric} unavailable ({status.reason}). To enable it: {status.how_to_enable}")
        self.metric = metric
        self.status = status


def hub_checkpoint_path(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url(url)`` caches its file: ``<hub dir>/checkpoints/<name>``.

    Read at call time, so it follows ``torch.hub.set_dir`` and ``TORCH_HOME``.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def cached_weights_status(url: str, what: str, fetch_command: str = "") -> MetricStatus:
    """Available when ``url``'s file is in the torch hub cache; else says where to put it. Never downloads.

    Args:
        url: the download address the library would use; its file name is what is looked for.
        what: the weights in words, for the message (e.g. "torchvision's ImageNet AlexNet").
        fetch_command: a command that fetches the file on a machine with internet access, if any.
    """
    path = hub_checkpoint_path(url)
    if path.is_file():
        return MetricStatus(True, "", "")
    command = f"run {fetch_command}, or " if fetch_command else ""
    return MetricStatus(
        False,
        f"weights not cached: {what} is not at {path}",
        (
            f"on a machine with internet access {command}download {url} and place it at {path} "
            "(the folder is torch.hub.get_dir()/checkpoints; TORCH_HOME moves it)."
        ),
    )


# --- input checks -----------------------------------------------------------------------------


def check_unit_images(name: str, x: Tensor) -> None:
    """Raise :class:`InputError` unless ``x`` is a finite float batch (B, C, H, W) with values in [0, 1]."""
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise InputError(f"'{name}' must be a float tensor (B, C, H, W) in [0, 1].")
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"'{name}' contains NaN or inf values.")
    if float(x.min()) < 0.0 or float(x.max()) > 1.0:
        raise InputError(
            f"'{name}' has values in [{float(x.min()):.4g}, {float(x.max()):.4g}]; "
            "metrics expect raw images in [0, 1]: clamp with .clamp(0, 1) first."
        )


def _check_pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Validate two image batches and return them as float32 (float64 kept)."""
    check_unit_images("a", a)
    check_unit_images("b", b)
    if a.shape != b.shape:
        raise InputError(f"image batches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}.")
    if a.shape[0] == 0:
        raise InputError("image batches are empty.")
    if a.device != b.device:
        raise InputError(f"image batches are on different devices: {a.device} vs {b.device}.")
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    return a.to(dtype), b.to(dtype)


# --- SSIM / PSNR ------------------------------------------------------------------------------


def _ssim_window(height: int, width: int) -> dict:
    """torchmetrics SSIM window arguments for an image size (see the module docstring)."""
    side = min(height, width)
    if side >= SSIM_GAUSSIAN_MIN_SIDE:
        return {"gaussian_kernel": True, "sigma": 1.5}  # 11x11 Gaussian, Wang et al. 2004
    if side < 3:
        raise InputError(f"SSIM needs images of at least 3x3 px, got {height}x{width}.")
    size = min(SSIM_SMALL_WINDOW, side if side % 2 == 1 else side - 1)
    return {"gaussian_kernel": False, "kernel_size": size}


def ssim_per_pair(a: Tensor, b: Tensor) -> list[float]:
    """SSIM of each pair ``(a[i], b[i])``, data_range 1.0; 1.0 means identical."""
    a, b = _check_pair(a, b)
    values = structural_similarity_index_measure(
        a, b, data_range=1.0, reduction="none", **_ssim_window(a.shape[-2], a.shape[-1])
    )  # (B,)
    return values.tolist()


def psnr_per_pair(a: Tensor, b: Tensor) -> list[float]:
    """PSNR in dB of each pair ``(a[i], b[i])``, data_range 1.0, capped at ``PSNR_CAP_DB``."""
    a, b = _check_pair(a, b)
    values = peak_signal_noise_ratio(a, b, data_range=1.0, dim=(1, 2, 3), reduction="none")  # (B,), inf if equal
    return values.clamp(max=PSNR_CAP_DB).tolist()


def ssim(a: Tensor, b: Tensor) -> float:
    """Mean SSIM over the pairs of two batches (B, C, H, W) in [0, 1]."""
    return _mean(ssim_per_pair(a, b))


def psnr(a: Tensor, b: Tensor) -> float:
    """Mean of the per-pair PSNRs in dB (each capped at ``PSNR_CAP_DB``) of two batches in [0, 1]."""
    return _mean(psnr_per_pair(a, b))


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


# --- LPIPS ------------------------------------------------------------------------------------

_LPIPS_LOCK = threading.Lock()
_LPIPS_CACHE: dict[torch.device, nn.Module] = {}  # pretrained-trunk models only, one per device


def lpips_status() -> MetricStatus:
    """Can LPIPS (AlexNet) be computed here? Checks files only; never downloads."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        return MetricStatus(False, "the 'lpips' package is not installed", "pip install lpips==0.1.4")
    linear_layers = Path(spec.origin).parent / "weights" / "v0.1" / "alex.pth"
    if not linear_layers.is_file():
        return MetricStatus(
            False,
            f"the lpips package has no linear-layer weights at {linear_layers}",
            "reinstall it: pip install --force-reinstall lpips==0.1.4",
        )
    return cached_weights_status(
        ALEXNET_WEIGHTS_URL,
        "torchvision's ImageNet AlexNet",
        fetch_command="python -c \"import torchvision; torchvision.models.alexnet(weights='IMAGENET1K_V1')\"",
    )


def _build_lpips(pretrained_backbone: bool) -> nn.Module:
    """Construct ``lpips.LPIPS(net='alex')`` in eval mode on the CPU.

    ``pretrained_backbone=False`` gives a *randomly initialised* AlexNet trunk (``pnet_rand=True``)
    with the real linear layers: for wiring tests only; its output is not LPIPS and must never be
    shown as such. ``pretrained_backbone=True`` refuses to run (rather than download) when the
    trunk weights are not cached.
    """
    if pretrained_backbone:
        status = lpips_status()
        if not status.available:
            raise MetricUnavailable("LPIPS", status)
    import lpips  # imported here: it pulls in torchvision's model zoo

    model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=not pretrained_backbone, verbose=False)
    return model.eval().requires_grad_(False)


def _pretrained_lpips(device: torch.device) -> nn.Module:
    """The real LPIPS model on ``device``, built once and cached (thread-safe)."""
    with _LPIPS_LOCK:
        model = _LPIPS_CACHE.get(device)
        if model is None:
            try:
                model = _build_lpips(pretrained_backbone=True)
            except MetricUnavailable:
                raise
            except Exception as error:  # e.g. a truncated cache file failing torchvision's hash check
                raise MetricUnavailable(
                    "LPIPS",
                    MetricStatus(
                        False,
                        f"the cached AlexNet weights could not be loaded: {error}",
                        f"delete {hub_checkpoint_path(ALEXNET_WEIGHTS_URL)} and fetch it again.",
                    ),
                ) from error
            model = model.to(device)
            _LPIPS_CACHE[device] = model
            logger.info("LPIPS (AlexNet) loaded on %s", device)
    return model


def _lpips_input(x: Tensor) -> Tensor:
    """(B, C, H, W) in [0, 1] -> (B, 3, H', W') in [0, 1], grey repeated, short side >= LPIPS_MIN_SIDE."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise InputError(f"LPIPS needs 1- or 3-channel images, got {x.shape[1]} channels.")
    height, width = x.shape[-2:]
    if min(height, width) < LPIPS_MIN_SIDE:
        scale = LPIPS_MIN_SIDE / min(height, width)
        size = (math.ceil(height * scale), math.ceil(width * scale))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x


def _lpips_per_pair_with(model: nn.Module, a: Tensor, b: Tensor) -> list[float]:
    """Distances from an LPIPS ``model`` for each pair; lpips maps [0, 1] to [-1, 1] (``normalize=True``)."""
    a, b = _check_pair(a, b)
    with torch.inference_mode():
        distances = model(_lpips_input(a).float(), _lpips_input(b).float(), normalize=True)  # (B, 1, 1, 1)
    return distances.flatten().tolist()


def lpips_per_pair(a: Tensor, b: Tensor) -> list[float]:
    """LPIPS (AlexNet, v0.1) of each pair; 0 means identical. Raises :class:`MetricUnavailable` offline."""
    return _lpips_per_pair_with(_pretrained_lpips(a.device), a, b)


def lpips_distance(a: Tensor, b: Tensor) -> float:
    """Mean LPIPS (AlexNet, v0.1) over the pairs. Raises :class:`MetricUnavailable` when weights are not cached."""
    return _mean(lpips_per_pair(a, b))
