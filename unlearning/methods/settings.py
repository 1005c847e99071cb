"""Method settings: a dataclass per method whose field defaults are the paper's values; :func:`setting` attaches
the help text, bounds and choices that drive validation, the UI controls and ``--set key=value`` parsing.

Imports nothing of the package but errors, so any module (a method, the UAM wrapper, the UI) may use it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import field
from typing import Any

from ..errors import InputError


def setting(default: Any, help: str, *, low: float | None = None, high: float | None = None,
            choices: Sequence[Any] | None = None, low_inclusive: bool = True, label: str | None = None,
            families: Sequence[str] | None = None) -> Any:
    """A settings field: its default is the paper's value; metadata drives validation and the UI (``label``:
    the control's label when it should not be the field name; ``families``: the model families the field means
    something for, when not all of them: the app hides it for other models)."""
    meta = {"help": help, "low": low, "high": high, "choices": tuple(choices) if choices else None, "low_inclusive": low_inclusive,
            "label": label, "families": tuple(families) if families else None}
    return field(default=default, metadata=meta)


def applies_to(f: dataclasses.Field, family: str | None) -> bool:
    """Whether a settings field means something for a model of ``family`` (None: unknown family, show everything)."""
    families = f.metadata.get("families")
    return family is None or not families or family in families


def settings_fields(settings_cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(settings_cls) if f.init]


def _convert(f: dataclasses.Field, value: Any) -> Any:
    """Convert a value (possibly a CLI string) to the field's type, with a clear error."""
    kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "bool": bool, "str": str}.get(str(f.type), str)
    try:
        if kind is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError
                return low in {"true", "1", "yes"}
            return bool(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, str):
                as_float = float(value)
                if not as_float.is_integer():
                    raise ValueError
                return int(as_float)
            return int(value)
        if kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"setting '{f.name}' must be {'a whole number' if kind is int else kind.__name__}, got {value!r}.") from None


def validate_settings(settings: Any) -> None:
    """Check every field against its bounds and choices; raise InputError naming the field."""
    for f in settings_fields(type(settings)):
        value, meta = getattr(settings, f.name), f.metadata
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"setting '{f.name}' must be a finite number, got {value}.")
        if meta.get("choices") and value not in meta["choices"]:
            raise InputError(f"setting '{f.name}' must be one of {', '.join(map(str, meta['choices']))}; got {value!r}.")
        low, high = meta.get("low"), meta.get("high")
        if low is not None and (value < low if meta.get("low_inclusive", True) else value <= low):
            op = ">=" if meta.get("low_inclusive", True) else ">"
            raise InputError(f"setting '{f.name}' must be {op} {low}; got {value}.")
        if high is not None and value > high:
            raise InputError(f"setting '{f.name}' must be <= {high}; got {value}.")
    if getattr(settings, "uam", False) and getattr(settings, "mixed_precision", "no") == "fp16":
        raise InputError("UAM takes its gradients itself, without fp16's loss scaling: use mixed_precision=bf16 (or no) with UAM.")
    check = getattr(settings, "check", None)
    if check is not None:
        check()


def build_settings(settings_cls: type, base: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """Settings from the defaults, then ``base`` (twin-tuned values), then user ``overrides``."""
    fields = {f.name: f for f in settings_fields(settings_cls)}
    unknown = sorted(set(overrides) - set(fields))
    if set(unknown) & {"uam", "uam_rho", "uam_gamma"}:
        raise InputError("UAM wraps methods whose loss has a forget and a retain part (esd, gradient_ascent, vdu, rmu); "
                         "this method has no UAM setting.")
    if unknown:
        raise InputError(f"unknown setting(s) {', '.join(unknown)}; this method's settings are: {', '.join(fields)}.")
    values = {name: _convert(fields[name], v) for name, v in {**base, **overrides}.items()}
    settings = settings_cls(**values)
    validate_settings(settings)
    return settings


# ---- memory settings of the training methods (read by methods.base.Memory) -------------------------

def mixed_precision_setting(fp16: bool = True):
    """``fp16=False`` for a method without loss scaling: it offers no and bf16 only."""
    if not fp16:
        return setting("no", "autocast: run the UNet's matrix products in bf16 (also on CPU); trained weights, the optimiser "
                       "and the loss stay float32 (no fp16: this method has no loss scaling)", choices=("no", "bf16"))
    return setting("no", "autocast: run the UNet's matrix products in fp16 or bf16 (also on CPU); trained weights, the optimiser "
                   "and the loss stay float32, frozen weights are read in the base model's dtype without a copy (fp16: with "
                   "loss scaling)", choices=("no", "fp16", "bf16"))


def checkpointing_setting():
    return setting(False, "gradient checkpointing: recompute the UNet's activations in the backward pass instead of keeping "
                   "them (much less memory, about a third slower)")


def lora_setting():
    return setting(0, "train a rank-r LoRA on the group's linear and convolution layers instead of the weights themselves "
                   "(0 = the weights; norms and biases stay); merged into the weights at the end", low=0, high=256)
