"""The cell store: benchmark cells on disk, keyed so a rerun continues where the last one stopped.

A *cell* is one unlearning run: (method, concept, seed) on one model under one set of settings. It is a folder:

    <root>/<method>/<concept>/seed<seed>-<hash>/
        edit.safetensors      the edit the method made (changed tensors only; optional)
        cell.json             what the unlearning cost: {"status", "unlearn_s", "peak_mem_bytes", "edit_bytes", ...}
        <measure>.json        one file per measurement made on the edit (the protocol's grid scores,
                              an attack's result, ...), each written by whoever measured it

``hash`` is the first 12 hex digits of sha256 over ``json.dumps({"model", "method", "settings"}, sort_keys=True)``
with the method's *resolved* settings (paper defaults, twin-tuned values, overrides), so changing a setting makes a
new cell while every benchmark that asks for the same run finds the same folder and reuses its edit. Measurements
name their own file (the protocol puts its sampling plan's hash in the name), so a changed plan re-measures an
existing edit without unlearning again. Every file is written atomically.

    store = CellStore(out_dir / "cells")
    key = store.key(model_id, "esd", "star", 0, settings)
    store.get(key)                          # cell.json, or None
    store.put(key, {"status": "done", ...}, edit)
    store.load_edit(key)                    # the Edit, or None
    store.get_measure(key, "protocol-1a2b")  # a measurement, or None
    store.put_measure(key, "protocol-1a2b", {...})
    for key, cell in store.cells(): ...
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_text_atomic
from ..edit import Edit


def settings_hash(model_id: str, method: str, settings: dict) -> str:
    """12 hex digits of sha256 over the model, the method and its resolved settings (sorted JSON)."""
    payload = json.dumps({"model": model_id, "method": method, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def safe_name(text: str) -> str:
    """A folder-name-safe form of a method or concept ("Van Gogh" -> "Van_Gogh")."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(text))[:60] or "_"


@dataclass(frozen=True)
class CellKey:
    model: str
    method: str
    concept: str
    seed: int
    settings_hash: str

    @property
    def relative(self) -> Path:
        return Path(safe_name(self.method)) / safe_name(self.concept) / f"seed{self.seed}-{self.settings_hash}"


class CellStore:
    """Cells under one folder (created on first write)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def key(model_id: str, method: str, concept: str, seed: int, settings: dict) -> CellKey:
        return CellKey(model_id, method, concept, int(seed), settings_hash(model_id, method, settings))

    def folder(self, key: CellKey) -> Path:
        return self.root / key.relative

    def edit_path(self, key: CellKey) -> Path:
        return self.folder(key) / "edit.safetensors"

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # missing or unreadable: recomputed

    def get(self, key: CellKey) -> dict | None:
        """cell.json of the cell, or None."""
        return self._read(self.folder(key) / "cell.json")

    def put(self, key: CellKey, record: dict, edit: Edit | None = None) -> Path:
        """Store the unlearning run (the edit first, so cell.json never points at a missing edit)."""
        if edit is not None:
            edit.save(self.edit_path(key))
        record = {**record, "model": key.model, "method": key.method, "concept": key.concept, "seed": key.seed,
                  "settings_hash": key.settings_hash, "edit": "edit.safetensors" if edit is not None else None}
        return write_text_atomic(self.folder(key) / "cell.json", json.dumps(record, indent=1, default=str) + "\n")

    def load_edit(self, key: CellKey) -> Edit | None:
        return Edit.load(self.edit_path(key)) if self.edit_path(key).is_file() else None

    def get_measure(self, key: CellKey, name: str) -> dict | None:
        return self._read(self.folder(key) / f"{name}.json")

    def put_measure(self, key: CellKey, name: str, record: dict) -> Path:
        return write_text_atomic(self.folder(key) / f"{name}.json", json.dumps(record, indent=1, default=str) + "\n")

    def cells(self) -> Iterator[tuple[Path, dict]]:
        """(folder, cell.json) of every readable cell, in path order."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.glob("*/*/seed*/cell.json")):
            record = self._read(path)
            if record is not None:
                yield path.parent, record
