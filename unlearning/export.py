"""Exports of an edit beyond the run folder's ``edit.safetensors`` (the new values of changed parameters).

- :func:`export_diffusers`: a complete diffusers folder of the unlearned model;
- :func:`export_delta`: ``new - base`` of the changed parameters, as safetensors (apply with :func:`apply_delta`);
- :func:`export_lora`: Stable Diffusion only: the UNet edit as a LoRA file that diffusers'
  ``pipe.load_lora_weights`` reads, by truncated SVD of each weight delta, with the reconstruction
  error reported; refused, with the reason, when the edit changes a tensor LoRA cannot express;
- :func:`write_model_card`: a README.md (Hugging Face model card) made from the run card;
- :func:`export_bundle`: all of the above in one folder; :func:`push_to_hub` uploads it (optional).

Every file and folder is written atomically (``unlearning.atomic``).

An edit that changes no weights (SLD: a sampling rule, ``Edit.sampling``) is a pipeline setting: the
diffusers folder then holds the base weights and says so (``unlearning_edit.json``, the model card), and the
delta and LoRA exports refuse with the same explanation (:func:`pipeline_setting_note`).

``export_diffusers`` writes a complete diffusers folder of the unlearned model (the base components
with the edited UNet, ``save_pretrained``, safetensors only). For Stable Diffusion the folder loads
with ``StableDiffusionPipeline.from_pretrained``; for the class-conditional family with this
package's adapter; for the novel-view family in Zero123's layout (``unlearning.models.zero123.Zero123.from_pretrained``,
the layout of ``kxic/zero123-xl``). The folder is built beside the destination and renamed into place, so a reader
never sees half an export; an existing non-empty destination is refused, never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_dir, atomic_file, write_text_atomic
from .edit import Edit
from .errors import InputError
from .hosting.profile import redact
from .models.base import FamilyAdapter
from .models.catalog import TEXT_TO_IMAGE


def pipeline_setting_note(edit: Edit) -> str | None:
    """For a sampling-time edit: why its export holds no changed weights and how to reproduce it; else None."""
    if not edit.sampling:
        return None
    rule = {k: v for k, v in edit.sampling.items() if k not in {"method", "note"}}
    shown = ", ".join(f"{k} = {v!r}" for k, v in rule.items())
    return (f"{edit.method.upper() or 'this method'} is a pipeline setting, not weights: it changes how the model is sampled "
            f"({shown}), and the weights are the base model's. Sample with that guidance (this app, or diffusers' "
            "StableDiffusionPipelineSafe with these values) to get the unlearned behaviour; a plain pipeline on these weights "
            "draws the concept.")


def _check_destination(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"'{out}' already exists and is not an empty folder; choose a new folder for the export.")


def base_module(adapter) -> nn.Module:
    """The module an edit's parameter names refer to: the UNet, or a language model's whole model."""
    return adapter.model if adapter.family == "causal-lm" else adapter.unet


def export_transformers(adapter, edit: Edit, out: str | Path) -> Path:
    """A causal language model with the edit as a full transformers folder at ``out`` (atomic): the weights
    (``save_pretrained``, safetensors, the base's dtype), the tokenizer, and the twin's domain files."""
    out = Path(out)
    _check_destination(out)
    edit.check_compatible(adapter.model)
    own = dict(adapter.model.named_parameters())
    # the base's state dict with the edited tensors swapped in: neither a copy of the model nor a change to it
    state = {**adapter.model.state_dict(), **{n: v.to(own[n].device, own[n].dtype) for n, v in edit.params.items()}}
    with atomic_dir(out) as tmp:
        adapter.model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        adapter.tokenizer.save_pretrained(tmp)
        source = Path(str(adapter.source))
        if source.is_dir():
            for extra in ("twin.json", "data"):
                if (source / extra).exists():
                    (shutil.copytree if (source / extra).is_dir() else shutil.copy2)(source / extra, tmp / extra)
        (tmp / "unlearning_edit.json").write_text(json.dumps({
            "base": edit.base, "method": edit.method, "settings": edit.settings, "changed_parameters": edit.num_changed,
        }, indent=2, default=str) + "\n")
    return out


def export_diffusers(adapter: FamilyAdapter, edit: Edit, out: str | Path) -> Path:
    """The unlearned model as a full model folder at ``out`` (atomic; diffusers' layout, or transformers' for a
    language model); returns the path."""
    if adapter.family == "causal-lm":
        return export_transformers(adapter, edit, out)
    out = Path(out)
    _check_destination(out)
    model, edited = adapter.edited(edit)  # copies: the base UNet and text encoder are never touched
    with atomic_dir(out) as tmp:
        if adapter.family in TEXT_TO_IMAGE:  # StableDiffusionPipeline / StableDiffusionXLPipeline of the base's components
            model.pipeline(edited).save_pretrained(tmp, safe_serialization=True)  # (AdvUnlearn: its edited text encoder)
        elif adapter.family == "novel-view":  # Zero123's own layout (the real checkpoints'), loads with Zero123.from_pretrained
            adapter.with_unet(edited).write_components(tmp, extra_index={"_unlearning_edit": edit.method})
        else:
            source = Path(adapter.source)
            changed = {"unet", model.conditioner_name} if model is not adapter else {"unet"}
            for item in source.iterdir():
                if item.name not in {*changed, "README.md", "training_report.json"}:
                    (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
            edited.save_pretrained(tmp / "unet", safe_serialization=True)
            if model is not adapter:  # AdvUnlearn: the edited label table
                model.conditioner.save_pretrained(tmp / model.conditioner_name, safe_serialization=True)
        source = Path(str(adapter.source))
        if source.is_dir():  # keep what the app needs to score the exported model like its base
            for extra in ("evaluator", "twin.json"):
                if (source / extra).exists() and not (tmp / extra).exists():
                    (shutil.copytree if (source / extra).is_dir() else shutil.copy2)(source / extra, tmp / extra)
        info = {"base": edit.base, "method": edit.method, "settings": edit.settings, "changed_parameters": edit.num_changed}
        if edit.sampling:
            info.update(sampling=edit.sampling, note=pipeline_setting_note(edit))
        (tmp / "unlearning_edit.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return out


# ---- the delta -------------------------------------------------------------------------------------------

DELTA_FORMAT = "unlearning-lab delta: new - base of changed parameters (float32)"


def export_delta(adapter: FamilyAdapter, edit: Edit, out: str | Path) -> Path:
    """``new - base`` for every changed parameter (UNet, a text encoder's under its prefix; or a language model), as
    safetensors (atomic)."""
    from safetensors.torch import save_file

    if note := pipeline_setting_note(edit):
        raise InputError(f"nothing to write as a delta. {note}")
    if adapter.family == "causal-lm":  # parameter names of the whole language model
        module = base_module(adapter)
        edit.check_compatible(module)
        deltas = edit.deltas(module)
    else:
        unet_part, cond_part = edit.split(adapter.conditioner_name)  # AdvUnlearn's text-encoder part keeps its prefix
        for part, module in ((unet_part, adapter.unet), (cond_part, adapter.conditioner)):
            part.check_compatible(module)
        deltas = {**unet_part.deltas(adapter.unet),
                  **{f"{adapter.conditioner_name}.{n}": d for n, d in cond_part.deltas(adapter.conditioner).items()}}
    metadata = {"format": DELTA_FORMAT, "method": edit.method, "base": json.dumps(edit.base, default=str),
                "settings": json.dumps(edit.settings, default=str)}
    with atomic_file(out) as tmp:
        save_file({n: d.contiguous() for n, d in deltas.items()}, str(tmp), metadata=metadata)
    return Path(out)


def apply_delta(module: nn.Module, path: str | Path) -> nn.Module:
    """A copy of ``module`` with a delta file added to its parameters (``module`` is not touched)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("format") != DELTA_FORMAT:
                raise InputError(f"'{path}' is not a delta exported by unlearning-lab (no '{DELTA_FORMAT}' tag).")
            deltas = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except InputError:
        raise
    except Exception as exc:  # safetensors raises its own error types
        raise InputError(f"'{path}' is not a readable safetensors file: {exc}") from exc
    own = dict(module.named_parameters())
    new = {}
    for name, delta in deltas.items():
        if name not in own or own[name].shape != delta.shape:
            raise InputError(f"the delta's '{name}' does not fit this model: it was made for another one.")
        new[name] = own[name].detach().to("cpu", torch.float32) + delta
    return Edit(params=new).apply_to_copy(module)


# ---- LoRA (Stable Diffusion) -----------------------------------------------------------------------------

@dataclass
class LoraReport:
    """What the LoRA file holds: per layer its rank and the relative error ||D - B A||_F / ||D||_F."""

    layers: dict[str, dict] = field(default_factory=dict)  # module name -> {"rank", "full_rank", "relative_error"}

    @property
    def max_relative_error(self) -> float:
        return max((v["relative_error"] for v in self.layers.values()), default=0.0)

    def summary(self) -> str:
        ranks = sorted({v["rank"] for v in self.layers.values()})
        exact = "exact up to float32 round-off" if self.max_relative_error < 1e-4 else "truncated"
        return (f"{len(self.layers)} layers, rank {ranks[0]}..{ranks[-1]}, largest relative error "
                f"{self.max_relative_error:.2e} ({exact})")


def lora_factors(delta: torch.Tensor, rank: int | None = None, tolerance: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(B, A, relative error) with ``B @ A`` ~= ``delta`` (out, in): truncated SVD.

    ``rank`` None: the smallest rank whose relative Frobenius error is at most ``tolerance``
    (the edit's own rank when it is low-rank, as UCE's is); else exactly ``rank`` (at most min(out, in)).
    """
    # D = U S V^T; B = U_r S_r (out, r), A = V_r^T (r, in)
    d = delta.to(torch.float64)
    U, S, Vh = torch.linalg.svd(d, full_matrices=False)
    norm = torch.linalg.norm(S)
    if norm == 0:
        raise InputError("a changed weight has a zero delta; nothing to factorise.")
    # tail[r] = ||D - D_r||_F / ||D||_F for r = 0 .. len(S)
    tail = torch.sqrt(torch.flip(torch.cumsum(torch.flip(S**2, [0]), 0), [0]) / norm**2)
    tail = torch.cat([tail, torch.zeros(1, dtype=tail.dtype)])
    r = max(1, int(torch.nonzero(tail <= tolerance)[0]) if rank is None else min(int(rank), len(S)))
    B = (U[:, :r] * S[:r]).to(torch.float32)  # (out, r)
    A = Vh[:r].to(torch.float32)  # (r, in)
    error = float(torch.linalg.norm(d - B.double() @ A.double()) / norm)
    return B.contiguous(), A.contiguous(), error


def lora_blockers(adapter: FamilyAdapter, edit: Edit) -> list[str]:
    """Changed parameters that a LoRA cannot carry (anything but the weight of a Linear layer)."""
    modules = dict(adapter.unet.named_modules())
    blockers = []
    for name in edit.params:
        module_name, _, leaf = name.rpartition(".")
        if leaf != "weight" or not isinstance(modules.get(module_name), nn.Linear):
            blockers.append(name)
    return blockers


def export_lora(adapter: FamilyAdapter, edit: Edit, out: str | Path, rank: int | None = None,
                tolerance: float = 1e-5) -> LoraReport:
    """The UNet edit as a LoRA safetensors file for ``StableDiffusionPipeline.load_lora_weights`` (atomic).

    Keys are diffusers' PEFT layout (``unet.<module>.lora_A.weight`` / ``lora_B.weight``), alpha = rank
    (scale 1), so base + B A reproduces the edit up to the reported truncation error.

    Raises:
        InputError: not a Stable Diffusion model, or the edit changes a tensor that is not a Linear
            weight (biases, norms, convolutions): no LoRA can express it; export the delta instead.
    """
    from safetensors.torch import save_file

    if note := pipeline_setting_note(edit):
        raise InputError(f"nothing to write as a LoRA. {note}")
    if adapter.family not in TEXT_TO_IMAGE:
        raise InputError(f"a LoRA export is for Stable Diffusion models; this is a {adapter.family} model. "
                         "Export the delta or the full model instead.")
    edit.check_compatible(adapter.unet)
    if blockers := lora_blockers(adapter, edit):
        shown = ", ".join(blockers[:3]) + (f" and {len(blockers) - 3} more" if len(blockers) > 3 else "")
        raise InputError(f"this edit cannot be written as a LoRA: it changes {shown}, which are not weights of linear "
                         "layers (a LoRA adds B A to a weight matrix only). Export the delta or the full model instead.")
    report = LoraReport()
    tensors = {}
    for name, delta in edit.deltas(adapter.unet).items():
        module = name.removesuffix(".weight")
        B, A, error = lora_factors(delta, rank, tolerance)
        tensors[f"unet.{module}.lora_A.weight"] = A
        tensors[f"unet.{module}.lora_B.weight"] = B
        report.layers[module] = {"rank": A.shape[0], "full_rank": min(delta.shape), "relative_error": error}
    metadata = {"format": "pt", "unlearning_lab": json.dumps({"method": edit.method, "base": edit.base,
                                                              "layers": report.layers}, default=str)}
    with atomic_file(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return report


# ---- the model card, the bundle, the hub ----------------------------------------------------------------

def write_model_card(card: dict, out: str | Path, lora: LoraReport | None = None, setting_note: str | None = None) -> Path:
    """A README.md (Hugging Face model card) from a run card (``run.json``), written atomically; ``setting_note``:
    the edit is a pipeline setting (:func:`pipeline_setting_note`), said up front and instead of the delta."""
    request, method, model = card.get("request", {}), card.get("method", {}), card.get("model", {})
    base = model.get("source") or request.get("model", "")
    hub_base = isinstance(base, str) and base.count("/") == 1 and not Path(base).exists()
    language_model = model.get("family") == "causal-lm"
    front = ["---", f"library_name: {'transformers' if language_model else 'diffusers'}", "tags:", "- machine-unlearning",
             "- unlearning-lab"]
    if hub_base:
        front.append(f"base_model: {base}")
    front.append("---")
    lines = [*front, "", f"# {request.get('model', 'model')} without {', '.join(card.get('task', {}).get('forget', []))}", "",
             f"Made with **{method.get('label', method.get('name', ''))}** ({method.get('citation', '')}) "
             "with unlearning-lab. Base model: `" + str(base) + "`.", ""]
    if setting_note:
        lines += ["**" + setting_note + "**", "", "## Files", "",
                  "- `model/`: the base model's diffusers folder; `model/unlearning_edit.json` holds the sampling setting."]
    else:
        lines += ["## Files", "",
                  f"- `model/`: the full {'transformers' if language_model else 'diffusers'} folder of the unlearned model "
                  "(`from_pretrained`).",
                  "- `delta.safetensors`: new - base of the changed parameters."]
    lines.append("- `run.json`: every setting, seed and library version of the run.")
    if lora is not None:
        lines.append(f"- `lora.safetensors`: the edit as a LoRA (`pipe.load_lora_weights`); {lora.summary()}.")
    metrics = card.get("metrics") or {}
    fr = metrics.get("forget_rate", {})
    if "original" in fr:
        what, how = (("forget-domain multiple-choice accuracy", fr.get("reference", "")) if language_model
                     else ("forget rate", "the run's evaluator"))
        lines += ["", "## Measured", "", f"{what.capitalize()} {fr['original']:.2f} -> {fr['unlearned']:.2f} "
                  f"(n = {fr.get('n', '?')}, {how})."]
    lines += ["", "## Reproduce", "", "    " + str(card.get("reproduce", "")), ""]
    return write_text_atomic(out, "\n".join(lines))


def export_bundle(folder: str | Path, out: str | Path, rank: int | None = None) -> tuple[Path, list[str]]:
    """Everything for one finished run folder in a new folder ``out``: model/, delta.safetensors,
    lora.safetensors (Stable Diffusion, where the edit is a LoRA), README.md, run.json. Returns
    (out, notes) where the notes say what was left out and why."""
    from .runner import load_run

    folder, out = Path(folder), Path(out)
    run, edit = load_run(folder)
    card = json.loads((folder / "run.json").read_text())
    if (folder / "metrics.json").is_file():
        card["metrics"] = json.loads((folder / "metrics.json").read_text())
    notes = []
    setting_note = pipeline_setting_note(edit)
    with atomic_dir(out) as tmp:
        export_diffusers(run.adapter, edit, tmp / "model")
        lora = None
        if setting_note:
            notes.append(f"no delta, no LoRA: {setting_note}")
        else:
            export_delta(run.adapter, edit, tmp / "delta.safetensors")
            try:
                lora = export_lora(run.adapter, edit, tmp / "lora.safetensors", rank=rank)
                notes.append(f"LoRA: {lora.summary()}.")
            except InputError as exc:
                notes.append(f"no LoRA: {exc}")
        shutil.copy2(folder / "run.json", tmp / "run.json")
        write_model_card(card, tmp / "README.md", lora, setting_note)
    return out, notes


HUB_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def push_to_hub(folder: str | Path, repo_id: str, allowed: bool, private: bool = True) -> str:
    """Upload an exported folder to a Hugging Face model repo; returns its URL.

    The token comes from the environment (``HF_TOKEN``) or huggingface_hub's own login; it is never
    logged or shown. Refused when the hosted profile does not allow it (``hub_export: false``), when
    offline, or without a token.
    """
    if not allowed:
        raise InputError("pushing to the Hugging Face Hub is disabled on this instance (hosted profile: hub_export: false).")
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in HUB_OFFLINE_VARS):
        raise InputError("cannot push to the Hugging Face Hub: offline mode is on (HF_HUB_OFFLINE); "
                         "unset it on a machine with network, or download the export and upload it yourself.")
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"nothing to push: '{folder}' is not an exported folder.")
    if not repo_id or repo_id.count("/") != 1:
        raise InputError(f"'{repo_id}' is not a repo id; write owner/name.")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    token = os.environ.get("HF_TOKEN") or None
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                   commit_message="unlearning-lab export")
    except HfHubHTTPError as exc:  # its text may echo request headers: say only the status
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        raise InputError(f"the Hub refused the push (HTTP {status}); check that HF_TOKEN has write access to "
                         f"'{repo_id}'.") from None
    except Exception as exc:  # noqa: BLE001 (network errors of httpx / requests, token errors): one line, the token redacted
        raise InputError(f"cannot push to the Hugging Face Hub ({type(exc).__name__}: {redact(str(exc))[:200]}); "
                         "check the network and HF_TOKEN, and try again.") from None
    return str(getattr(commit, "commit_url", f"https://huggingface.co/{repo_id}"))
