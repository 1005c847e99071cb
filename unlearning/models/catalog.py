"""Known model sources and the adapter cache.

A model source is one of: the id of an embedded twin shipped in ``assets/`` (e.g. ``digits``), a
local folder in diffusers' layout, or (later families) a hub id. Each source is loaded once per
(device, dtype) and cached; the cached adapter's base weights are never modified.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ..devices import inference_dtype, resolve_device
from ..errors import InputError
from .base import FamilyAdapter

ASSETS = Path(__file__).resolve().parents[2] / "assets"


@dataclass(frozen=True)
class ModelEntry:
    id: str
    label: str
    family: str
    path: Path
    description: str


CATALOG: dict[str, ModelEntry] = {
    e.id: e
    for e in [
        ModelEntry(
            id="digits",
            label="digits (embedded)",
            family="class-conditional",
            path=ASSETS / "digits",
            description="A 1.7 M-parameter class-conditional DDPM trained here on scikit-learn's handwritten digits "
            "(16x16). Concepts are the ten digits. Runs on any CPU.",
        ),
    ]
}

FAMILY_LOADERS = {"class-conditional": "unlearning.models.class_cond:ClassConditionalAdapter"}
FAMILY_ALLOWS_HALF = {"class-conditional": False}


def family_of_folder(path: Path) -> str:
    """Read a folder's model_index.json and name its family, or say why it cannot be loaded."""
    index = path / "model_index.json"
    if not index.is_file():
        raise InputError(f"'{path}' has no model_index.json: point at a diffusers model folder (the folder save_pretrained wrote).")
    try:
        meta = json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"'{index}' is not valid JSON ({exc}).") from exc
    family = meta.get("_unlearning_family")
    if family in FAMILY_LOADERS:
        return family
    raise InputError(
        f"'{path}' holds a {meta.get('_class_name', 'unknown')} model, which this version cannot load; "
        f"supported: {', '.join(CATALOG)} or a folder of the same layout."
    )


def resolve(model: str) -> tuple[str, Path, str]:
    """(model id, folder, family) for a catalog id or a local folder; InputError otherwise."""
    text = (model or "").strip()
    if not text:
        raise InputError(f"no model given; pick one of: {', '.join(CATALOG)}, or a local folder.")
    if text in CATALOG:
        entry = CATALOG[text]
        if not (entry.path / "model_index.json").is_file():
            raise InputError(f"the embedded model '{text}' is missing from {entry.path}; reinstall or retrain it.")
        return entry.id, entry.path, entry.family
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"'{text}' is a file; give the model's folder instead.")
        return str(path.resolve()), path.resolve(), family_of_folder(path)
    raise InputError(f"unknown model '{text}': not an embedded model ({', '.join(CATALOG)}) and no such folder.")


_cache: dict[tuple[str, str, str], FamilyAdapter] = {}
_lock = threading.Lock()


def load_adapter(model: str, device: str | torch.device = "auto") -> FamilyAdapter:
    """The cached adapter for a model source on a device (loaded on first use)."""
    model_id, path, family = resolve(model)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dtype = inference_dtype(dev, FAMILY_ALLOWS_HALF[family])
    key = (model_id, str(dev), str(dtype))
    with _lock:
        if key not in _cache:
            module_name, cls_name = FAMILY_LOADERS[family].split(":")
            import importlib

            cls = getattr(importlib.import_module(module_name), cls_name)
            try:
                _cache[key] = cls(path, dev, dtype)
            except (OSError, ValueError, KeyError) as exc:
                raise InputError(f"could not load the model in '{path}': {exc}") from exc
        return _cache[key]
