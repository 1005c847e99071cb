"""Metrics: thin wrappers over torchmetrics, lpips and scipy.

Every function takes raw images in [0, 1] (before display encoding). Metrics that need pretrained
weights have a ``*_status()`` that says, without downloading, whether they can be computed here;
when they cannot, the metric raises :class:`MetricUnavailable` with how to enable it.
"""

from .fid import EvaluatorFID, FeatureModel, evaluator_fid, inception_fid_status
from .image import (
    PSNR_CAP_DB,
    MetricStatus,
    MetricUnavailable,
    lpips_distance,
    lpips_per_pair,
    lpips_status,
    psnr,
    psnr_per_pair,
    ssim,
    ssim_per_pair,
)
from .stats import Rate, mean_interval, pul, rate_with_interval

__all__ = [
    "PSNR_CAP_DB",
    "EvaluatorFID",
    "FeatureModel",
    "MetricStatus",
    "MetricUnavailable",
    "Rate",
    "evaluator_fid",
    "inception_fid_status",
    "lpips_distance",
    "lpips_per_pair",
    "lpips_status",
    "mean_interval",
    "psnr",
    "psnr_per_pair",
    "pul",
    "rate_with_interval",
    "ssim",
    "ssim_per_pair",
]
