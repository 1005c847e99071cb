"""Edit: what an unlearning method changed, kept apart from the base model.

An Edit holds the *new values* of the parameters a method changed (only those), the loss log and
the timings. The base model is never modified in place:

- :meth:`Edit.apply_to_copy` builds an edited copy (the comparison engine uses this);
- :meth:`Edit.applied` swaps the new values into a module for the duration of a ``with`` block and
  restores the *kept originals* afterwards, so removal is bit-exact (no ``w + d - d`` round-off);
- :meth:`Edit.deltas` gives ``new - old`` for inspection and export.

A method that changes no weights but how the model is sampled (SLD's safety guidance) returns an Edit
with no parameters and a ``sampling`` rule: a small JSON-able dict naming the method and its
settings. ``apply_to_copy`` / ``applied`` attach that rule to the UNet they hand out (the attribute
:data:`SAMPLING_RULE`), and the family adapter's sampling loop follows it, so the comparison engine,
the benchmarks and the relearning test treat such a model like any other edited model. Exports say
that the rule is a pipeline setting, not weights.
Names are the UNet's parameter names; names under ``text_encoder.`` or ``label_encoder.`` belong to the
conditioner (AdvUnlearn trains the text encoder), and ``FamilyAdapter.edited(edit)`` applies both parts.

Saved as safetensors (changed tensors only) with the method, its settings and the base model's
identity in the metadata, written atomically (temp file + rename).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .atomic import atomic_file
from .errors import DivergedError, InputError

SAMPLING_RULE = "unlearning_sampling_rule"  # attribute of an edited UNet copy that carries the edit's sampling rule
_SAMPLING_RULES: dict[str, Callable] = {}  # method name -> factory(adapter, unet, cond, spec) -> rule


def register_sampling_rule(method: str, factory: Callable) -> None:
    """Make a sampling-time method's rule known (the method registry does this for every method that has one)."""
    _SAMPLING_RULES[method] = factory


def sampling_rule_factory(method: str) -> Callable:
    """The registered factory of a sampling rule; a clear error when no method registered it."""
    if method not in _SAMPLING_RULES:
        raise InputError(f"this model carries a '{method}' sampling rule but no method registered it; "
                         "import unlearning.methods first (its registry registers every sampling-time method).")
    return _SAMPLING_RULES[method]
# Parameter names of an edit that belong to the conditioner rather than the UNet (AdvUnlearn edits the text encoder).
CONDITIONER_PREFIXES = ("text_encoder.", "label_encoder.")


@dataclass
class Edit:
    params: dict[str, torch.Tensor]  # parameter name -> new value (CPU, float32), changed ones only
    method: str = ""
    settings: dict = field(default_factory=dict)
    loss_log: list[dict] = field(default_factory=list)  # [{"step": i, "loss": float, ...}]
    timings: dict = field(default_factory=dict)  # {"unlearn_s": ...}
    base: dict = field(default_factory=dict)  # identity of the base model (source, family)
    sampling: dict = field(default_factory=dict)  # sampling-time rule ({"method": "sld", ...}); {} for weight edits

    @property
    def weightless(self) -> bool:
        """True for a pure sampling-time edit (no weight changes, only a sampling rule)."""
        return not self.params and bool(self.sampling)

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

    # ---- parts: the UNet's parameters (no prefix) and a conditioner's ("text_encoder.", "label_encoder.") ----
    def prefixed(self, prefix: str) -> Edit:
        """The same edit with every parameter name under ``prefix.`` (an edit of the text encoder, say)."""
        return dataclasses.replace(self, params={f"{prefix}.{n}": v for n, v in self.params.items()})

    def split(self, prefix: str) -> tuple[Edit, Edit]:
        """(the part without a conditioner prefix, i.e. the UNet's; the part under ``prefix.``, prefix removed)."""
        head = f"{prefix}."
        unet = {n: v for n, v in self.params.items() if not n.startswith(CONDITIONER_PREFIXES)}
        cond = {n[len(head):]: v for n, v in self.params.items() if prefix and n.startswith(head)}
        if other := sorted(n for n in self.params if n.startswith(CONDITIONER_PREFIXES) and not n.startswith(head)):
            raise InputError(f"this edit changes '{other[0]}', which this model does not have: it was made for another model.")
        return dataclasses.replace(self, params=unet), dataclasses.replace(self, params=cond)

    @property
    def changes_conditioner(self) -> bool:
        """True when the edit changes the text encoder or label table, not only the UNet (AdvUnlearn)."""
        return any(n.startswith(CONDITIONER_PREFIXES) for n in self.params)

    # ---- applying -----------------------------------------------------------------------------
    def check_compatible(self, module: nn.Module) -> None:
        own = dict(module.named_parameters())
        for name, value in self.params.items():
            if name not in own and name.startswith(CONDITIONER_PREFIXES):
                raise InputError(f"this {self.method or ''} edit also changes the model's {name.split('.')[0].replace('_', ' ')}, "
                                 "which this step cannot apply (it handles UNet edits only).")
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
        if self.sampling:
            setattr(edited, SAMPLING_RULE, dict(self.sampling))  # on the copy only
        return edited

    @contextmanager
    def applied(self, module: nn.Module) -> Iterator[nn.Module]:
        """Temporarily apply the edit in place; the kept originals are restored exactly on exit."""
        self.check_compatible(module)
        own = dict(module.named_parameters())
        originals = {name: own[name].detach().clone() for name in self.params}
        rule = getattr(module, SAMPLING_RULE, None)
        try:
            with torch.no_grad():
                for name, value in self.params.items():
                    own[name].copy_(value.to(own[name].device, own[name].dtype))
            if self.sampling:
                setattr(module, SAMPLING_RULE, dict(self.sampling))
            yield module
        finally:
            with torch.no_grad():
                for name, value in originals.items():
                    own[name].copy_(value)
            if self.sampling:
                if rule is None:
                    delattr(module, SAMPLING_RULE)
                else:
                    setattr(module, SAMPLING_RULE, rule)

    def deltas(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """``new - old`` per changed parameter (float32, CPU)."""
        own = dict(module.named_parameters())
        return {n: v - own[n].detach().to("cpu", torch.float32) for n, v in self.params.items()}

    # ---- summary ------------------------------------------------------------------------------
    @property
    def num_changed(self) -> int:
        return sum(v.numel() for v in self.params.values())

    def summary(self) -> dict:
        out = {"method": self.method, "changed_tensors": len(self.params), "changed_values": self.num_changed}
        if self.sampling:
            out["sampling"] = dict(self.sampling)  # a pipeline setting, not weights
        return out

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
            "sampling": json.dumps(self.sampling, default=str),
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
            sampling=json.loads(meta.get("sampling", "{}")),
        )
