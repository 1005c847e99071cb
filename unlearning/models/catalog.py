"""Known model sources of every family and the adapter cache.

A model source is one of: the id of an embedded twin shipped in ``assets/`` (``digits``,
``shapes-sd``, ``shapes-3d``, ``facts-lm``), a local folder in diffusers' layout (``model_index.json``; Zero123's
own layout for the novel-view family) or in transformers' layout for a causal language model (``config.json``
naming a ``...ForCausalLM``), or a Hugging Face hub id of any of these kinds (loaded from the local cache, or
downloaded where the hub is reachable). Each source is loaded once per (device, dtype) and
cached; the cached adapter's base weights are never modified.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ..devices import inference_dtype, resolve_device
from ..errors import InputError
from ..hosting.profile import HostProfile, check_model_allowed, get_profile
from ..paths import ASSETS  # the twins: the checkout's assets/, or the installed package's
from .base import FamilyAdapter, SamplingDefaults, read_twin, vocabulary_words


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
        ModelEntry(
            id="shapes-sd",
            label="shapes-sd (embedded Stable Diffusion)",
            family="stable-diffusion",
            path=ASSETS / "shapes-sd",
            description="A tiny Stable Diffusion (the real pipeline classes: CLIP text encoder, VAE, UNet) trained here on "
            "captioned shapes (32x32). Concepts: shapes (star, circle, ...), colours (red, blue, ...) or any prompt. Runs on any CPU.",
        ),
        ModelEntry(
            id="shapes-3d",
            label="shapes-3d (embedded Zero123, novel views)",
            family="novel-view",
            path=ASSETS / "shapes-3d",
            description="A tiny Zero123 (the real layout: CLIP image encoder, VAE, 8-channel UNet, CCProjection) trained here on "
            "rendered 3D objects (32x32). Concepts are input views: objects such as 'blue pyramid' (ground-truth renders exist "
            "at every pose) or uploaded images. Runs on any CPU.",
        ),
        ModelEntry(
            id="facts-lm",
            label="facts-lm (embedded language model)",
            family="causal-lm",
            path=ASSETS / "facts-lm",
            description="A small Llama-style language model (transformers' LlamaForCausalLM) trained here on generated text "
            "about two made-up domains: 'hazard' (invented compounds, WMDP's role: the domain to forget) and 'general' "
            "(invented cities and people, MMLU's role). Scored on held-out four-option questions. Runs on any CPU.",
        ),
    ]
}

# Real checkpoints the picker offers (any other hub id of the same layout works too).
HUB_MODELS = {
    "CompVis/stable-diffusion-v1-4": "stable-diffusion",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "stable-diffusion",
    "stabilityai/stable-diffusion-2-1-base": "stable-diffusion",
    "kxic/zero123-165000": "novel-view",
    "kxic/zero123-xl": "novel-view",
    "stabilityai/stable-diffusion-xl-base-1.0": "stable-diffusion-xl",
    "HuggingFaceH4/zephyr-7b-beta": "causal-lm",  # the WMDP / UAM papers' model
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")

FAMILY_LOADERS = {
    "class-conditional": "unlearning.models.class_cond:ClassConditionalAdapter",
    "stable-diffusion": "unlearning.models.sd:StableDiffusionAdapter",
    "novel-view": "unlearning.models.novel_view:NovelViewAdapter",
    "stable-diffusion-xl": "unlearning.models.sdxl:StableDiffusionXLAdapter",
    "causal-lm": "unlearning.models.causal_lm:CausalLMAdapter",
}
FAMILY_ALLOWS_HALF = {"class-conditional": False, "stable-diffusion": True, "novel-view": True, "stable-diffusion-xl": True, "causal-lm": True}
FAMILY_HALF_DTYPE = {"causal-lm": torch.bfloat16}  # on a GPU without bf16, fp16 (language models train unstably in fp16)
FAMILY_MARKER = {"causal-lm": "config.json"}  # the file a model folder of the family holds (default model_index.json)
# What a family's comparison takes beside its concepts: "prompts" (the user's own prompts, shown beside the scored
# grids), "sampler" (a choice of diffusers scheduler), "guidance" (a classifier-free guidance scale). The run refuses
# what its family does not take; the app shows only these controls for a model of the family. A novel-view run has
# input views and camera poses instead (its own tab): DDIM and Zero123's guidance are fixed.
FAMILY_OPTIONS: dict[str, frozenset[str]] = {
    "class-conditional": frozenset({"sampler", "guidance"}),
    "stable-diffusion": frozenset({"sampler", "guidance", "prompts"}),
    "stable-diffusion-xl": frozenset({"sampler", "guidance", "prompts"}),
    "novel-view": frozenset(),
    "causal-lm": frozenset(),  # continuations and scored questions (compare_lm.TextView)
}
# model_index.json's _class_name (the real checkpoints') or _unlearning_family (written here) -> family
PIPELINE_FAMILIES = {"StableDiffusionPipeline": "stable-diffusion", "StableDiffusionXLPipeline": "stable-diffusion-xl",
                     "Zero1to3StableDiffusionPipeline": "novel-view", "zero123": "novel-view"}
TEXT_TO_IMAGE = ("stable-diffusion", "stable-diffusion-xl")  # families conditioned on free text


def family_of_index(meta: dict, where: str) -> str:
    family = meta.get("_unlearning_family") or meta.get("_class_name", "")
    family = PIPELINE_FAMILIES.get(family, family)
    if family not in FAMILY_LOADERS and "cc_projection" in meta:  # a Zero123 layout under another pipeline name
        family = "novel-view"
    if family in FAMILY_LOADERS:
        return family
    raise InputError(
        f"'{where}' holds a {meta.get('_class_name', 'unknown')} model, which this version cannot load; "
        f"supported: {', '.join(CATALOG)}, Stable Diffusion 1.x / 2.x / XL, Zero123 / Zero123-XL, or a folder of the same layout."
    )


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 1.5) -> bool:
    """Whether huggingface.co answers (never when HF_HUB_OFFLINE is set); asked once per process."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def hub_cached(repo: str) -> bool:
    """Whether the repo's model_index.json and UNet config are in the local Hugging Face cache."""
    return hub_snapshot(repo) is not None


def hub_availability(repo: str) -> tuple[bool, str]:
    """(usable now, a sentence saying why or why not) for a hub id."""
    if hub_cached(repo):
        return True, "in the local Hugging Face cache"
    if hub_reachable():
        return True, "downloadable from the hub (several GB on first use)"
    return False, (f"not in the local Hugging Face cache and the hub cannot be reached from here (offline). Download it on a "
                   f"connected machine (`huggingface-cli download {repo}`) and copy the cache, or give a local folder.")


def hub_snapshot(repo: str) -> Path | None:
    """The folder of the repo's cached snapshot (``models--owner--name/snapshots/<hash>/``, the one ``refs/main``
    names) when its model_index.json and UNet config (a diffusers pipeline), or its config.json and tokenizer
    config (a transformers language model) are in the local Hugging Face cache; else None."""
    from huggingface_hub import try_to_load_from_cache

    for files in (("model_index.json", "unet/config.json"), ("config.json", "tokenizer_config.json")):
        found = [try_to_load_from_cache(repo, f) for f in files]
        if all(isinstance(f, str) for f in found):
            return Path(found[0]).parent
    return None


def _resolve_hub(repo: str) -> tuple[str, Path | str, str]:
    """A hub id: its cached snapshot folder when the cache has it (loaded exactly like a local folder, no network
    needed), else the id itself where the hub can be reached (diffusers downloads it on load)."""
    if not HUB_ID.match(repo):
        raise InputError(f"'{repo}' is not a valid hub id (owner/name: letters, digits, '-', '_', '.').")
    snapshot = hub_snapshot(repo)
    if snapshot is not None:
        return repo, snapshot, family_of_folder(snapshot, repo)
    ok, why = hub_availability(repo)
    if not ok:
        raise InputError(f"'{repo}' is {why}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        try:
            index = hf_hub_download(repo, "model_index.json")
        except EntryNotFoundError:  # not a diffusers pipeline: a transformers language model?
            config = hf_hub_download(repo, "config.json")
            return repo, repo, family_of_config(json.loads(Path(config).read_text()), repo)
    except RepositoryNotFoundError:
        raise InputError(f"'{repo}' does not exist on the hub (or is private); check the spelling.") from None
    except EntryNotFoundError:
        raise InputError(f"'{repo}' has neither a model_index.json (diffusers) nor a config.json (transformers).") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise InputError(f"could not fetch '{repo}' from the hub: {exc}") from None
    return repo, repo, family_of_index(json.loads(Path(index).read_text()), repo)


def family_of_config(config: dict, where: str) -> str:
    """A transformers config.json: a causal language model (``architectures`` names a ``...ForCausalLM``), or why not."""
    arch = config.get("architectures") or []
    if any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in arch):
        return "causal-lm"
    raise InputError(f"'{where}' holds a transformers {', '.join(arch) or config.get('model_type', 'model')}, not a causal "
                     "language model (its config.json names no ...ForCausalLM architecture).")


def family_of_folder(path: Path, where: str | None = None) -> str:
    """Read a folder's model_index.json (diffusers) or config.json (transformers) and name its family, or say why it
    cannot be loaded."""
    where = where or str(path)
    index, config = path / "model_index.json", path / "config.json"
    if not index.is_file() and not config.is_file():
        raise InputError(f"'{path}' has no model_index.json or config.json: point at a diffusers or transformers model folder "
                         "(the folder save_pretrained wrote).")
    file = index if index.is_file() else config
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"'{file}' is not valid JSON ({exc}).") from exc
    return family_of_index(meta, where) if file is index else family_of_config(meta, where)


def is_hub_id(text: str) -> bool:
    return bool(HUB_ID.match(text))


def resolve(model: str, profile: HostProfile | None = None) -> tuple[str, Path | str, str]:
    """(model id, folder or hub id, family) for a catalog id, a local folder or a hub id; InputError otherwise.

    The profile in force is asked first (``check_model_allowed``): a hosted profile refuses what it does not
    offer, local folders included, before anything looks at the disk or the hub."""
    text = (model or "").strip()
    if not text:
        raise InputError(f"no model given; pick one of: {', '.join(CATALOG)}, or a local folder.")
    profile = profile or get_profile()
    check_model_allowed(text, list(CATALOG), is_hub_id, profile)
    if not profile.allow_local_models and text not in CATALOG:
        return _resolve_hub(text)  # a hub id (the check above refused anything else); the disk is not looked at
    if text in CATALOG:
        entry = CATALOG[text]
        if not (entry.path / FAMILY_MARKER.get(entry.family, "model_index.json")).is_file():
            raise InputError(f"the embedded model '{text}' is missing from {entry.path}; reinstall or retrain it.")
        return entry.id, entry.path, entry.family
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"'{text}' is a file; give the model's folder instead.")
        return str(path.resolve()), path.resolve(), family_of_folder(path)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return _resolve_hub(text)
    raise InputError(f"unknown model '{text}': not an embedded model ({', '.join(CATALOG)}), not a hub id (owner/name) "
                     "and no such folder.")


# ---- what the app shows before a model is loaded (read from the folder, no weights) -------------------------

def family_of(model: str) -> str | None:
    """The family of a model source, read without loading weights (catalog, folder or cached hub index); None when it
    cannot be told now (e.g. an unknown id, or a hub model that is neither cached nor reachable)."""
    text = (model or "").strip()
    if text in CATALOG:
        return CATALOG[text].family
    if text in HUB_MODELS:
        return HUB_MODELS[text]
    try:
        return resolve(text)[2]
    except InputError:
        return None


def concept_choices(model: str) -> list[str]:
    """Suggested concepts, read from the model folder without loading any weights (free text is allowed too)."""
    try:
        model_id, path, family = resolve(model)
    except InputError:
        return []
    if family == "novel-view":  # input views: the renderer's objects (or uploaded images), for any Zero123
        from ..datasets.render3d import all_objects

        return [o.name for o in all_objects()]
    if not isinstance(path, Path):
        return []  # a hub model: open vocabulary
    if family == "class-conditional":
        meta = json.loads((path / "label_encoder" / "config.json").read_text())
        return list(meta.get("class_names") or [str(i) for i in range(meta["num_classes"])])
    if family == "causal-lm":
        return list(read_twin(path).get("domains", {}))  # a real model's domains come from $UNLEARNING_LM_DATA
    return vocabulary_words(read_twin(path).get("vocabulary", {}))


def sampling_defaults(model: str) -> tuple[int, float]:
    """The model's default (sampling steps, guidance scale), to pre-fill the form.

    Gradio 6 shows a ``gr.Number(None)`` as 0 and sends 0, so "leave it empty for the default" would
    silently ask for 0 steps / guidance 0; the form shows the real defaults instead. Reads the same
    ``twin.json`` the adapter reads, without loading the model.
    """
    try:
        _, path, family = resolve(model)
        defaults = SamplingDefaults.from_twin(read_twin(path), family)
    except (InputError, OSError, ValueError):
        defaults = SamplingDefaults.from_twin({}, HUB_MODELS.get(model, ""))  # e.g. a hub model not reachable now
    return int(defaults.num_inference_steps), float(defaults.guidance_scale)


_cache: dict[tuple[str, str, str], FamilyAdapter] = {}
_lock = threading.Lock()


def load_adapter(model: str, device: str | torch.device = "auto", *, dtype: torch.dtype | None = None,
                 resolution: int | None = None) -> FamilyAdapter:
    """The cached adapter for a model source on a device (loaded on first use).

    ``dtype`` None: float16 on CUDA for families published in half precision, float32 otherwise; a half
    dtype on CPU (bfloat16) keeps the frozen base in half precision there too. ``resolution`` (text-to-image
    families): the image side sampled and trained at (None: the model's own).
    """
    model_id, path, family = resolve(model)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if dtype is None:
        dtype = inference_dtype(dev, FAMILY_ALLOWS_HALF[family])
        if dtype == torch.float16 and family in FAMILY_HALF_DTYPE and torch.cuda.is_bf16_supported():
            dtype = FAMILY_HALF_DTYPE[family]
    if dtype != torch.float32 and not FAMILY_ALLOWS_HALF[family]:
        raise InputError(f"{family} models run in float32 only; drop the dtype.")
    if resolution is not None and family not in TEXT_TO_IMAGE:
        raise InputError(f"a resolution applies to text-to-image models; {family} models have a fixed size.")
    key = (model_id, str(dev), str(dtype), resolution)
    with _lock:
        if key not in _cache:
            module_name, cls_name = FAMILY_LOADERS[family].split(":")
            import importlib

            cls = getattr(importlib.import_module(module_name), cls_name)
            try:
                _cache[key] = cls(path, dev, dtype, **({"resolution": resolution} if resolution else {}))
            except (OSError, ValueError, KeyError) as exc:
                raise InputError(f"could not load the model in '{path}': {exc}") from exc
        return _cache[key]
