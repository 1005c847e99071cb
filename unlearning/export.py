"""Exports of an edit beyond the run folder's ``edit.safetensors`` (the changed parameters only).

``export_diffusers`` writes a complete diffusers folder of the unlearned model (the base components
with the edited UNet, ``save_pretrained``, safetensors only). For Stable Diffusion the folder loads
with ``StableDiffusionPipeline.from_pretrained``; for the class-conditional family with this
package's adapter. The folder is built beside the destination and renamed into place, so a reader
never sees half an export; an existing non-empty destination is refused, never overwritten.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from .edit import Edit
from .errors import InputError
from .models.base import FamilyAdapter


def _check_destination(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"'{out}' already exists and is not an empty folder; choose a new folder for the export.")


def export_diffusers(adapter: FamilyAdapter, edit: Edit, out: str | Path) -> Path:
    """The unlearned model as a full diffusers folder at ``out`` (atomic); returns the path."""
    out = Path(out)
    _check_destination(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    edited = edit.apply_to_copy(adapter.unet)  # the base UNet is never touched
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        if adapter.family == "stable-diffusion":
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline(
                vae=adapter.vae, text_encoder=adapter.text_encoder, tokenizer=adapter.tokenizer, unet=edited,
                scheduler=adapter.pipeline_scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            )
            pipe.save_pretrained(tmp, safe_serialization=True)
        else:
            source = Path(adapter.source)
            for item in source.iterdir():
                if item.name not in {"unet", "README.md", "training_report.json"}:
                    (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
            edited.save_pretrained(tmp / "unet", safe_serialization=True)
        source = Path(str(adapter.source))
        if source.is_dir():  # keep what the app needs to score the exported model like its base
            for extra in ("evaluator", "twin.json"):
                if (source / extra).exists() and not (tmp / extra).exists():
                    (shutil.copytree if (source / extra).is_dir() else shutil.copy2)(source / extra, tmp / extra)
        (tmp / "unlearning_edit.json").write_text(json.dumps({
            "base": edit.base, "method": edit.method, "settings": edit.settings, "changed_parameters": edit.num_changed,
        }, indent=2, default=str) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
