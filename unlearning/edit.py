"""Edit: what an unlearning method changed, kept apart from the base model.

An Edit holds the *new values* of the parameters a method changed (only those), the loss log and
the timings. The base model is never modified in place:

- :meth:`Edit.apply_to_copy` builds an edited copy (the comparison engine uses this);
- :meth:`Edit.applied` swaps the new values into a module for the duration of a ``with`` block and
  restores the *kept originals* afterwards, so removal is bit-exact (no ``w + d - d`` round-off);
- :meth:`Edit.deltas` gives ``new - old`` for inspection and export.

Saved as safetensors (changed tensors only) with the method, its settings and the base model's
identity in the metadata, written atomically (temp file + rename).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .atomic import atomic_file
from .errors import DivergedError, InputError


@dataclass
class Edit:
    params: dict[str, torch.Tensor]  # parameter name -> new value (CPU, float32), changed ones only
    method: str = ""
    settings: dict = field(default_factory=dict)
    loss_log: list[dict] = field(default_factory=list)  # [{"step": i, "loss": float, ...}]
    timings: dict = field(default_factory=dict)  # {"unlearn_s": ...}
    base: dict = field(default_factory=dict)  # identity of the base model (source, family)

    @classmethod
    def from_trained(cls, original: nn.Module, trained: nn.Module, names: Iterable[str], **info) -> Edit:
        """Collect the parameters in ``names`` that differ between ``trained`` and ``original``.

        Refuses (DivergedError) when any trained value is not finite; the base is untouched.
        """
        new_params = dict(trained.named_parameters())
        return cls.from_values(original, {name: new_params[name] for name in names}, **info)

    @classmethod
    def from_values(cls, original: nn.Module, values: dict[str, torch.Tensor], **info) -> Edit:
        """The Edit of new ``values`` (parameter name -> tensor) for ``original``'s parameters: the changed ones only.

        Refuses (DivergedError) when any value is not finite; the base is untouched.
        """
        base_params = dict(original.named_parameters())
        changed = {}
        for name, value in values.items():
            new = value.detach()
            if not torch.isfinite(new).all():
                raise DivergedError(
                    f"the method produced non-finite weights in '{name}'; lower the learning rate and run again. "
                    "The base model is unchanged."
                )
            if not torch.equal(new.to(base_params[name].device, base_params[name].dtype), base_params[name].detach()):
                changed[name] = new.to("cpu", torch.float32).clone()
        return cls(params=changed, **info)

    # ---- applying -----------------------------------------------------------------------------
    def check_compatible(self, module: nn.Module) -> None:
        own = dict(module.named_parameters())
        for name, value in self.params.items():
            if name not in own:
                raise InputError(f"this edit changes '{name}', which the model does not have: it was made for another model.")
            if own[name].shape != value.shape:
                raise InputError(
                    f"this edit's '{name}' has shape {tuple(value.shape)} but the model's is {tuple(own[name].shape)}: "
                    "it was made for another model."
                )

    def apply_to_copy(self, module: nn.Module) -> nn.Module:
        """A deep copy of ``module`` with the edit applied; ``module`` itself is not touched."""
        self.check_compatible(module)
        edited = copy.deepcopy(module)
        own = dict(edited.named_parameters())
        with torch.no_grad():
            for name, value in self.params.items():
                own[name].copy_(value.to(own[name].device, own[name].dtype))
        return edited

    @contextmanager
    def applied(self, module: nn.Module) -> Iterator[nn.Module]:
        """Temporarily apply the edit in place; the kept originals are restored exactly on exit."""
        self.check_compatible(module)
        own = dict(module.named_parameters())
        originals = {name: own[name].detach().clone() for name in self.params}
        try:
            with torch.no_grad():
                for name, value in self.params.items():
                    own[name].copy_(value.to(own[name].device, own[name].dtype))
            yield module
        finally:
            with torch.no_grad():
                for name, value in originals.items():
                    own[name].copy_(value)

    def deltas(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """``new - old`` per changed parameter (float32, CPU)."""
        own = dict(module.named_parameters())
        return {n: v - own[n].detach().to("cpu", torch.float32) for n, v in self.params.items()}

    # ---- summary ------------------------------------------------------------------------------
    @property
    def num_changed(self) -> int:
        return sum(v.numel() for v in self.params.values())

    def summary(self) -> dict:
        return {"method": self.method, "changed_tensors": len(self.params), "changed_values": self.num_changed}

    # ---- files --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the changed tensors as safetensors, atomically (temp file in the same folder + rename)."""
        path = Path(path)
        metadata = {
            "format": "unlearning-lab edit: new values of changed parameters",
            "method": self.method,
            "settings": json.dumps(self.settings, default=str),
            "timings": json.dumps(self.timings),
            "base": json.dumps(self.base, default=str),
        }
        with atomic_file(path) as tmp:
            save_file({n: t.contiguous() for n, t in self.params.items()}, str(tmp), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Edit:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"no edit file at '{path}'.")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                params = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        except Exception as exc:  # safetensors raises its own error types
            raise InputError(f"'{path}' is not a readable safetensors edit: {exc}") from exc
        return cls(
            params=params,
            method=meta.get("method", ""),
            settings=json.loads(meta.get("settings", "{}")),
            timings=json.loads(meta.get("timings", "{}")),
            base=json.loads(meta.get("base", "{}")),
        )
