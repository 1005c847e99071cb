"""Fast CPU tests for unlearning.metrics: SSIM / PSNR / LPIPS wiring, evaluator-FID, statistics."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from unlearning.errors import InputError
from unlearning.metrics import (
    PSNR_CAP_DB,
    MetricUnavailable,
    evaluator_fid,
    inception_fid_status,
    lpips_distance,
    lpips_status,
    mean_interval,
    psnr,
    psnr_per_pair,
    pul,
    rate_with_interval,
    ssim,
    ssim_per_pair,
)
from unlearning.metrics import image as image_metrics

Z95 = NormalDist().inv_cdf(0.975)  # 1.95996...
# lpips 0.1.4 calls torchvision's alexnet(pretrained=...), deprecated since torchvision 0.13
TORCHVISION_LEGACY = pytest.mark.filterwarnings("ignore:.*deprecated since 0.13:UserWarning")


def _images(seed: int, shape: tuple[int, ...] = (3, 1, 16, 16)) -> torch.Tensor:
    """Structured images in [0, 1]: a diagonal gradient plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    height, width = shape[-2:]
    ramp = (torch.arange(height)[:, None] + torch.arange(width)[None, :]).float() / (height + width - 2)
    noise = 0.1 * torch.rand(shape, generator=generator)
    return (0.9 * ramp + noise).clamp(0, 1)


@pytest.fixture
def empty_hub_dir(tmp_path, monkeypatch):
    """A torch hub dir with no cached weights, and an empty LPIPS model cache; both restored after."""
    monkeypatch.setattr(torch.hub, "_hub_dir", torch.hub._hub_dir)  # restore on teardown
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setattr(image_metrics, "_LPIPS_CACHE", {})
    return tmp_path / "hub"


# --- SSIM / PSNR ------------------------------------------------------------------------------


def test_identical_images_give_ssim_one_and_capped_psnr():
    a = _images(0)
    assert ssim(a, a.clone()) == pytest.approx(1.0, abs=1e-5)
    assert psnr(a, a.clone()) == PSNR_CAP_DB
    assert psnr_per_pair(a, a.clone()) == [PSNR_CAP_DB] * 3


def test_psnr_matches_mse_formula_per_pair():
    a = _images(1)
    b = (a + 0.05 * torch.randn(a.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    mse = ((a.double() - b.double()) ** 2).mean(dim=(1, 2, 3))  # (B,)
    expected = [10 * math.log10(1.0 / m) for m in mse.tolist()]
    assert psnr_per_pair(a, b) == pytest.approx(expected, rel=1e-4)
    assert psnr(a, b) == pytest.approx(sum(expected) / len(expected), rel=1e-4)
    assert 15 < psnr(a, b) < 40  # 5 % noise, far from the cap


def test_ssim_of_image_and_its_inverse_is_low():
    a = _images(3)
    assert ssim(a, 1.0 - a) < 0.5
    assert all(value < 0.5 for value in ssim_per_pair(a, 1.0 - a))


def test_ssim_window_follows_image_size():
    # >= 32 px: the paper's 11x11 Gaussian; smaller: a 7x7 uniform window; tiny: the largest odd that fits
    assert image_metrics._ssim_window(64, 64) == {"gaussian_kernel": True, "sigma": 1.5}
    assert image_metrics._ssim_window(16, 16) == {"gaussian_kernel": False, "kernel_size": 7}
    assert image_metrics._ssim_window(6, 9) == {"gaussian_kernel": False, "kernel_size": 5}
    assert ssim(_images(4, (2, 3, 5, 5)), _images(5, (2, 3, 5, 5))) < 1.0
    with pytest.raises(InputError, match="at least 3x3"):
        ssim(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


def test_inputs_outside_unit_range_or_mismatched_are_refused():
    a = _images(6)
    with pytest.raises(InputError, match="clamp"):
        psnr(a * 2.0, a)
    with pytest.raises(InputError, match="differ in shape"):
        ssim(a, a[:2])


# --- LPIPS ------------------------------------------------------------------------------------


def test_lpips_unavailable_without_cached_weights(empty_hub_dir):
    status = lpips_status()
    assert not status.available
    assert "not cached" in status.reason
    assert str(empty_hub_dir / "checkpoints" / "alexnet-owt-7be5be79.pth") in status.reason
    assert "IMAGENET1K_V1" in status.how_to_enable

    a = _images(7)
    with pytest.raises(MetricUnavailable) as caught:
        lpips_distance(a, a)
    assert status.how_to_enable in str(caught.value)
    assert image_metrics._LPIPS_CACHE == {}  # nothing was built


@TORCHVISION_LEGACY
def test_lpips_status_looks_in_the_hub_cache_and_bad_files_are_reported(empty_hub_dir):
    weights = empty_hub_dir / "checkpoints" / "alexnet-owt-7be5be79.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"not a checkpoint")
    assert lpips_status().available  # the file is where torchvision would look
    with pytest.raises(MetricUnavailable, match="could not be loaded"):
        lpips_distance(_images(8), _images(9))
    assert image_metrics._LPIPS_CACHE == {}


@pytest.fixture(scope="module")
def random_trunk_lpips():
    """WIRING TEST ONLY: LPIPS with a randomly initialised AlexNet trunk. Its output is not LPIPS."""
    torch.manual_seed(0)
    return image_metrics._build_lpips(pretrained_backbone=False)


@TORCHVISION_LEGACY
def test_lpips_wiring_with_random_trunk(random_trunk_lpips):
    # Exercises grey -> 3 channels, 16 px -> 64 px upsampling and the [0, 1] -> [-1, 1] mapping.
    a, b = _images(10), _images(11)
    same = image_metrics._lpips_per_pair_with(random_trunk_lpips, a, a.clone())
    different = image_metrics._lpips_per_pair_with(random_trunk_lpips, a, 1.0 - b)
    assert same == [0.0, 0.0, 0.0]
    assert len(different) == 3 and all(d > 0 for d in different)
    assert image_metrics._lpips_input(a).shape == (3, 3, 64, 64)


def test_pretrained_lpips_build_refuses_to_download(empty_hub_dir):
    with pytest.raises(MetricUnavailable, match="not cached"):
        image_metrics._build_lpips(pretrained_backbone=True)
    assert not (empty_hub_dir / "checkpoints").exists()


# --- evaluator-FID ----------------------------------------------------------------------------


class _RandomFeatures(nn.Module):
    """A tiny fixed random projection standing in for an evaluator: (B, 1, 8, 8) -> (B, 4)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(64, 4)
        nn.init.normal_(self.proj.weight)  # unit-scale weights, so a brightness shift moves the features clearly

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images.flatten(1))  # (B, 4)


def _frechet_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Independent float64 Fréchet distance with scipy's sqrtm (test oracle only)."""
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_x @ cov_y).real
    return float(((mu_x - mu_y) ** 2).sum() + np.trace(cov_x + cov_y - 2 * covmean))


def test_evaluator_fid_same_set_is_zero_and_shifted_set_is_not():
    model = _RandomFeatures()
    generator = torch.Generator().manual_seed(1)
    real = torch.rand(64, 1, 8, 8, generator=generator)
    shifted = (0.5 * real + 0.5).clamp(0, 1)

    same = evaluator_fid(model, real, real.clone())
    different = evaluator_fid(model, real, shifted, batch_size=7)

    assert same == pytest.approx(0.0, abs=1e-8)
    assert different > 1.0
    with torch.no_grad():
        expected = _frechet_reference(model.features(real).double().numpy(), model.features(shifted).double().numpy())
    assert different == pytest.approx(expected, rel=1e-6)
    assert evaluator_fid(model, real, shifted, batch_size=256) == pytest.approx(different, rel=1e-9)
    assert model.proj.weight.dtype == torch.float32  # the caller's evaluator is not cast


def test_evaluator_fid_on_the_project_evaluator():
    from unlearning.models.evaluator import ImageClassifier

    torch.manual_seed(0)
    evaluator = ImageClassifier().eval()  # untrained: exercises the (B, 1, 16, 16) -> (B, 64) wiring only
    generator = torch.Generator().manual_seed(2)
    real = torch.rand(24, 1, 16, 16, generator=generator)
    same = evaluator_fid(evaluator, real, real.clone())
    shifted = evaluator_fid(evaluator, real, 0.2 * real)
    assert same == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(shifted) and shifted > 1000 * max(same, 1e-9)


def test_evaluator_fid_refuses_too_few_samples():
    with pytest.raises(InputError, match="at least 2"):
        evaluator_fid(_RandomFeatures(), torch.rand(1, 1, 8, 8), torch.rand(4, 1, 8, 8))


def test_inception_fid_unavailable_without_cached_weights(empty_hub_dir):
    status = inception_fid_status()
    assert not status.available
    assert status.reason and status.how_to_enable


# --- statistics -------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (1, 3), (50, 200)])
def test_wilson_interval_brackets_the_rate(k, n):
    rate = rate_with_interval(k, n)
    assert rate.value == k / n and rate.n == n
    assert 0.0 <= rate.low <= rate.value <= rate.high <= 1.0
    assert rate.low < rate.high


def test_wilson_interval_known_values():
    # k = 0: [0, z^2 / (n + z^2)]; k = n mirrors it
    zero = rate_with_interval(0, 10)
    assert zero.low == 0.0
    assert zero.high == pytest.approx(Z95**2 / (10 + Z95**2), rel=1e-9)  # 0.2775
    full = rate_with_interval(10, 10)
    assert full.low == pytest.approx(1 - zero.high, rel=1e-9) and full.high == 1.0
    # general k: centre (k + z^2/2) / (n + z^2), half-width z / (n + z^2) * sqrt(k (n - k) / n + z^2 / 4)
    k, n = 3, 10
    centre = (k + Z95**2 / 2) / (n + Z95**2)
    half = Z95 / (n + Z95**2) * math.sqrt(k * (n - k) / n + Z95**2 / 4)
    rate = rate_with_interval(k, n)
    assert (rate.low, rate.high) == pytest.approx((centre - half, centre + half), rel=1e-9)


def test_rate_refuses_bad_counts():
    for k, n in [(1, 0), (-1, 5), (6, 5), (0.5, 5)]:
        with pytest.raises(InputError):
            rate_with_interval(k, n)


def test_pul_examples():
    assert pul(0.8, 0.2) == pytest.approx(75.0)
    assert pul(0.5, 0.5) == 0.0
    assert pul(0.2, 0.4) == pytest.approx(-100.0)
    assert pul(1.0, 0.0) == 100.0
    assert pul(0.0, 0.1) is None


def test_mean_interval():
    mean, low, high = mean_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, df=2} * s / sqrt(n), s = 1
    assert mean == 2.0
    assert (low, high) == pytest.approx((2.0 - half, 2.0 + half), rel=1e-9)
    assert mean_interval([1.0, 3.0]) == (2.0, None, None)
    assert mean_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    with pytest.raises(InputError):
        mean_interval([])
