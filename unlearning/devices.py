"""Device and dtype choice: CUDA when present, else CPU; overridable by the user."""

from __future__ import annotations

import re

import torch

from .errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | None = "auto") -> torch.device:
    """Turn "auto" / "cpu" / "cuda" / "cuda:N" into a device that exists on this machine."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise InputError(f"device '{name}' was asked for, but no CUDA GPU is visible here; use 'cpu' or 'auto'.")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise InputError(f"device '{name}' does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
        return torch.device(name)
    raise InputError(f"unknown device '{name}': use one of auto, cpu, cuda or cuda:N.")


def inference_dtype(device: torch.device, family_allows_half: bool) -> torch.dtype:
    """fp16 on CUDA for families whose weights are published in half precision, else fp32."""
    if device.type == "cuda" and family_allows_half:
        return torch.float16
    return torch.float32
