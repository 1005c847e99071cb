"""Evaluator-FID on a twin's evaluator features, and the availability of real (Inception) FID.

**Evaluator-FID** is the Fréchet distance computed by torchmetrics' ``FrechetInceptionDistance``
on the penultimate features of a twin's evaluator classifier instead of Inception-v3's. Its values
are not comparable with published FIDs, so it is called "evaluator-FID" everywhere, never FID.

Read it with its sample counts. The estimate is biased upward, and the bias grows as the number
of samples falls relative to the feature dimension (Chong & Forsyth, "Effectively Unbiased FID",
2020): two sets drawn from the same distribution score above 0, and scores computed from
different sample counts cannot be compared. Always show ``n_real`` and ``n_fake`` beside it and
use the same counts for everything being compared.

torchmetrics details this module relies on (torchmetrics 1.9, ``torchmetrics/image/fid.py``):

- a custom ``feature`` module must return (N, d). Without a ``num_features`` attribute,
  torchmetrics probes it with a random (1, 3, 299, 299) image, which a 1-channel 16x16 evaluator
  cannot take; the adaptor below therefore sets ``num_features`` from a 2-image probe of the real
  set;
- with a custom module, ``normalize=True`` only means "float inputs"; images are passed as given;
- the running sums and covariances are already float64 (``set_dtype`` is not needed, and it would
  also cast the integer sample counters), but ``compute()`` casts the result back to the dtype the
  feature module returned, so the adaptor returns float64 features to keep it in float64;
- ``.to`` / ``set_dtype`` act on every submodule, so the evaluator is held through its bound
  ``features`` method, not as a submodule: the caller's model is never cast or moved.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from ..errors import InputError
from .image import MetricStatus, cached_weights_status, check_unit_images

logger = logging.getLogger(__name__)

# Inception-v3 (TF 2015-12-05) ported by torch-fidelity, the extractor torchmetrics' FID loads.
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)


class FeatureModel(Protocol):
    """Anything with ``features(images (B, C, H, W) in [0, 1]) -> (B, d)``, e.g. a twin's evaluator."""

    def features(self, images: Tensor) -> Tensor: ...


class _FeatureAdaptor(nn.Module):
    """Presents ``features`` as the ``nn.Module`` torchmetrics' FID expects, returning float64 (B, d)."""

    def __init__(self, features: Callable[[Tensor], Tensor], num_features: int) -> None:
        super().__init__()
        self._features = features  # a bound method, so not registered as a submodule
        self.num_features = num_features  # read by torchmetrics instead of its 299x299 dummy forward

    def forward(self, images: Tensor) -> Tensor:
        features = self._features(images)  # (B, d)
        if features.shape != (images.shape[0], self.num_features):
            raise InputError(
                f"feature_model.features returned shape {tuple(features.shape)} for {images.shape[0]} images; "
                f"expected ({images.shape[0]}, {self.num_features})."
            )
        if not bool(torch.isfinite(features).all()):
            raise InputError("feature_model.features returned NaN or inf; evaluator-FID cannot be computed.")
        return features.double()


class EvaluatorFID:
    """Evaluator-FID against one fixed real set whose features are computed once, for many fake sets.

    The comparison engine scores the growing sample set after every batch, for two models, against the
    same real data; the real side (features, mean, covariance) is the same every time, so it is kept
    (torchmetrics' ``reset_real_features=False``). ``EvaluatorFID(model, real)(fake)`` gives exactly
    :func:`evaluator_fid`'s value.
    """

    def __init__(self, feature_model: FeatureModel, real_images: Tensor, batch_size: int = 256) -> None:
        check_unit_images("real_images", real_images)
        if real_images.shape[0] < 2:
            raise InputError(f"evaluator-FID needs at least 2 real_images, got {real_images.shape[0]}.")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}.")
        self.batch_size, self.n_real = batch_size, real_images.shape[0]
        self.device = torch.device(getattr(feature_model, "device", real_images.device))
        with torch.no_grad():
            # 1. probe the feature dimension d on two real images
            probe = feature_model.features(real_images[:2].to(self.device))  # (2, d)
            if probe.ndim != 2:
                raise InputError(f"feature_model.features must return (B, d), got shape {tuple(probe.shape)}.")
            self.adaptor = _FeatureAdaptor(feature_model.features, num_features=int(probe.shape[1]))
            # 2. float64 feature sums and covariance of the real set, kept across resets
            self.fid = FrechetInceptionDistance(feature=self.adaptor, normalize=True, reset_real_features=False).to(self.device)
            self._update(real_images, real=True)

    def _update(self, images: Tensor, real: bool) -> None:
        for start in range(0, images.shape[0], self.batch_size):
            self.fid.update(images[start : start + self.batch_size].to(self.device), real=real)

    def __call__(self, fake_images: Tensor) -> float:
        check_unit_images("fake_images", fake_images)
        if fake_images.shape[0] < 2:
            raise InputError(f"evaluator-FID needs at least 2 fake_images, got {fake_images.shape[0]}.")
        with torch.no_grad():
            self.fid.reset()  # the fake side only
            self._update(fake_images, real=False)
            # 3. ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))
            value = float(self.fid.compute())
        logger.info("evaluator-FID %.4g (n_real=%d, n_fake=%d, d=%d)", value, self.n_real, fake_images.shape[0],
                    self.adaptor.num_features)
        return max(value, 0.0)


def evaluator_fid(
    feature_model: FeatureModel,
    real_images: Tensor,
    fake_images: Tensor,
    batch_size: int = 256,
) -> float:
    """Evaluator-FID between ``real_images`` (reference) and ``fake_images`` (samples), in float64.

    Args:
        feature_model: object with ``features(images) -> (B, d)``, called under ``torch.no_grad`` as it
            is (put it in eval mode first; it is not changed here). Batches are moved to its ``device``
            attribute when it has one (diffusers / transformers models do), else stay where they are.
        real_images: (N_real, C, H, W) in [0, 1], N_real >= 2.
        fake_images: (N_fake, C, H, W) in [0, 1], N_fake >= 2.
        batch_size: images per ``features`` call (default 256).

    Returns:
        The Fréchet distance between Gaussians fitted to the two feature sets; 0 for identical sets
        (tiny negative round-off is reported as 0). Biased upward with few samples: report
        N_real and N_fake beside it. Scoring many fake sets against one real set: :class:`EvaluatorFID`.
    """
    return EvaluatorFID(feature_model, real_images, batch_size)(fake_images)


def inception_fid_status() -> MetricStatus:
    """Can real FID (torchmetrics + torch-fidelity Inception-v3) be computed here? Checks files only."""
    if importlib.util.find_spec("torch_fidelity") is None:
        return MetricStatus(
            False,
            "the 'torch-fidelity' package (torchmetrics' Inception-v3 extractor) is not installed",
            "pip install torch-fidelity, then fetch the Inception weights (see this status once installed).",
        )
    return cached_weights_status(INCEPTION_WEIGHTS_URL, "Inception-v3 (inception-2015-12-05, torch-fidelity's port)")
