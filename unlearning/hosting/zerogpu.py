"""ZeroGPU: run the GPU work of a request inside ``spaces.GPU``, asking for as long as the request needs.

On a Hugging Face ZeroGPU Space, a GPU is attached only while a function decorated with
``spaces.GPU`` runs, for at most its ``duration`` seconds; a large fixed duration is refused
("illegal duration") and spends the visitor's quota. So the duration is a callable of the request:

    seconds = margin * (overhead_s + iterations * step_s[method] + pairs * 2 * sampling_steps * sample_step_s)
    duration = ceil(min(seconds, max_duration))

- ``iterations``: the method's training steps (1 for the closed-form UCE / ScaPre, which solve once);
- ``step_s[method]``: the profile's ``gpu_duration`` (measured seconds per iteration), else
  ``zerogpu.default_step_s``;
- ``pairs * 2 * sampling_steps``: UNet calls of the comparison (original and unlearned, each pair);
- everything else from the profile's ``zerogpu`` section (``unlearning.hosting.profile.ZeroGPU``).

The ``spaces`` package exists only on Spaces: it is imported when present, and without it
:func:`on_gpu` returns the function itself, so the same code runs unchanged on a laptop or a
dedicated GPU. Whatever crosses the function boundary is plain CPU data (the request, PIL images,
strings, data frames, file paths): :func:`unlearning.ui.run_stream` yields nothing else.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, TypeVar

from .profile import HostProfile, get_profile

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_SAMPLING_STEPS = 50  # when the model's own default cannot be read (an unknown hub id)


def _spaces():
    """The ``spaces`` module when installed (on a Hugging Face Space), else None."""
    try:
        import spaces  # noqa: PLC0415 (optional, present on Spaces only)
    except ImportError:
        return None
    return spaces


def zero_gpu_active() -> bool:
    """True on a ZeroGPU Space (``spaces`` installed and configured for ZeroGPU)."""
    spaces = _spaces()
    if spaces is None:
        return False
    config = getattr(getattr(spaces, "config", None), "Config", None)
    return bool(getattr(config, "zero_gpu", False))


def _iterations(request) -> int:
    """Training iterations of the request's method (1 for a closed-form solve or an unreadable request)."""
    from ..methods import get_method

    try:
        spec = get_method(request.method)
        model_id = _model_id(request.model)
        settings = spec.settings(model_id, request.settings)
    except Exception:  # noqa: BLE001 (a bad request fails in prepare() with its own message; ask for little here)
        return 1
    return max(1, int(getattr(settings, "iterations", 1) or 1))


def _model_id(model: str) -> str | None:
    from ..models.catalog import resolve

    try:
        return resolve(model)[0]
    except Exception:  # noqa: BLE001 (unknown model: no tuned values)
        return None


def _pairs(request, max_samples: int) -> int:
    """Comparison pairs the request will generate (as ``plan_comparison`` counts them), at most ``max_samples``."""
    from ..models.catalog import concept_choices

    forget = [request.forget] if isinstance(request.forget, str) else list(request.forget or [])
    n_forget = max(1, len(forget))
    forget_pairs = max(1, int(request.forget_samples) // n_forget) * n_forget
    if request.preserve:
        retained = len(request.preserve)
    else:  # every other concept the model knows; an open-vocabulary model: assume the most the profile allows
        known = concept_choices(request.model)
        retained = max(1, len(known) - n_forget) if known else max_samples
    prompts = 2 * len(request.prompts or [])
    return min(max_samples, forget_pairs + int(request.retain_samples) * retained + prompts)


def _sampling_steps(request) -> int:
    if request.num_inference_steps:
        return int(request.num_inference_steps)
    from ..models.catalog import sampling_defaults

    try:
        return sampling_defaults(request.model)[0]
    except Exception:  # noqa: BLE001
        return DEFAULT_SAMPLING_STEPS


def estimate_seconds(request, profile: HostProfile | None = None) -> float:
    """The uncapped estimate (with margin) of the GPU seconds ``request`` (a RunRequest) needs."""
    from ..methods import get_method

    profile = profile or get_profile()
    z = profile.zerogpu
    try:
        name = get_method(request.method).name
    except Exception:  # noqa: BLE001
        name = str(request.method)
    step_s = profile.gpu_duration.get(name, z.default_step_s)
    training = _iterations(request) * step_s
    sampling = _pairs(request, profile.limits.max_samples) * 2 * _sampling_steps(request) * z.sample_step_s
    return z.margin * (z.overhead_s + training + sampling)


def estimate_duration(request, profile: HostProfile | None = None) -> int:
    """Seconds to ask ``spaces.GPU`` for: the estimate, rounded up, capped at ``zerogpu.max_duration``."""
    profile = profile or get_profile()
    seconds = estimate_seconds(request, profile)
    if seconds > profile.zerogpu.max_duration:
        log.warning("request needs about %.0f s of GPU; asking for the profile's maximum %.0f s", seconds,
                    profile.zerogpu.max_duration)
    return math.ceil(min(seconds, profile.zerogpu.max_duration))


def on_gpu(duration: Callable[..., int]) -> Callable[[F], F]:
    """``spaces.GPU(duration=duration)`` where the ``spaces`` package exists; elsewhere the function unchanged.

    ``duration`` is called by ZeroGPU with the same arguments as the decorated function.
    """
    def decorate(fn: F) -> F:
        spaces = _spaces()
        if spaces is None:
            return fn
        return spaces.GPU(duration=duration)(fn)

    return decorate


def request_duration(request, *args: Any, **kwargs: Any) -> int:
    """The ``duration`` callable for a function whose first argument is the RunRequest."""
    return estimate_duration(request)
