"""Exports: the delta, the LoRA (diffusers' load_lora_weights, shapes-sd twin), the model card and bundle,
atomic writes, and the hub push's refusals (disallowed, offline; no network is used)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unlearning.atomic import atomic_dir, atomic_file
from unlearning.errors import InputError
from unlearning.export import (
    apply_delta,
    export_bundle,
    export_delta,
    export_lora,
    lora_factors,
    push_to_hub,
)
from unlearning.methods import get_method
from unlearning.methods.base import RunContext, UnlearnTask
from unlearning.models.catalog import load_adapter
from unlearning.runner import RunRequest, execute, prepare

TWIN = Path(__file__).resolve().parents[1] / "assets" / "shapes-sd"


@pytest.fixture(scope="module")
def sd():
    return load_adapter("shapes-sd", "cpu")


@pytest.fixture(scope="module")
def uce_edit(sd):
    spec = get_method("uce")
    return spec.unlearn(sd, UnlearnTask(forget=["star"], retain=["circle", "square"]), spec.settings("shapes-sd"), RunContext())


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


# ---- atomic writes ---------------------------------------------------------------------------------------

def test_atomic_file_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]  # no temp file left behind


def test_atomic_dir_refuses_a_non_empty_folder_and_cleans_up(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1"
    with pytest.raises(InputError, match="not an empty folder"), atomic_dir(out):
        pass
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "other") as tmp:
        (tmp / "b").write_text("2")
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---- delta ---------------------------------------------------------------------------------------------------

def test_delta_round_trip_reproduces_the_edit(sd, uce_edit, tmp_path):
    before = _state(sd.unet)
    path = export_delta(sd, uce_edit, tmp_path / "delta.safetensors")
    rebuilt = apply_delta(sd.unet, path)
    own = dict(rebuilt.named_parameters())
    for name, value in uce_edit.params.items():
        # base + (new - base) in float32: equal to the edit up to one rounding of the addition
        torch.testing.assert_close(own[name].detach(), value, rtol=0, atol=1e-6)
    untouched = set(dict(sd.unet.named_parameters())) - set(uce_edit.params)
    assert all(torch.equal(own[n], dict(sd.unet.named_parameters())[n]) for n in untouched)
    seeds = [3, 4]
    a = sd.generate(["a star", "a circle"], seeds, unet=uce_edit.apply_to_copy(sd.unet), num_inference_steps=6)
    b = sd.generate(["a star", "a circle"], seeds, unet=rebuilt, num_inference_steps=6)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    assert all(torch.equal(v, sd.unet.state_dict()[k]) for k, v in before.items())  # base untouched
    with pytest.raises(InputError, match="not a delta exported by unlearning-lab"):
        apply_delta(sd.unet, TWIN / "unet" / "diffusion_pytorch_model.safetensors")


# ---- LoRA ---------------------------------------------------------------------------------------------------

def test_lora_factors_find_the_rank_and_report_truncation():
    torch.manual_seed(0)
    low = torch.randn(40, 3) @ torch.randn(3, 30)  # rank 3
    B, A, err = lora_factors(low)
    assert A.shape == (3, 30) and B.shape == (40, 3) and err < 1e-5
    B1, A1, err1 = lora_factors(low, rank=1)
    assert A1.shape[0] == 1 and 0.05 < err1 < 1  # truncated: the error is reported, not hidden
    torch.testing.assert_close(B1 @ A1 + (low - B1 @ A1), low)


def test_uce_edit_is_low_rank_and_loads_with_diffusers_load_lora_weights(sd, uce_edit, tmp_path):
    from diffusers import StableDiffusionPipeline

    path = tmp_path / "lora.safetensors"
    report = export_lora(sd, uce_edit, path)
    assert report.layers and report.max_relative_error < 1e-4
    # UCE's delta is W0 (M - I) with rank(M - I) <= the erased tokens: far below the layer's width
    assert all(v["rank"] < v["full_rank"] for v in report.layers.values()), report.layers

    def pipe():
        return StableDiffusionPipeline.from_pretrained(str(TWIN), safety_checker=None, requires_safety_checker=False,
                                                       use_safetensors=True, dtype=torch.float32)

    edited, base, lora = pipe(), pipe(), pipe()
    edited.unet = uce_edit.apply_to_copy(edited.unet)
    lora.load_lora_weights(str(path))

    def images(p):
        return p(["a star", "a circle"], num_inference_steps=6, guidance_scale=5.0, output_type="np",
                 generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images

    want, got, plain = images(edited), images(lora), images(base)
    assert abs(want - got).max() < 2e-3, abs(want - got).max()  # LoRA-on-the-fly vs merged weights: round-off only
    assert abs(want - plain).max() > 20 * abs(want - got).max()  # and the edit itself is far larger than that


def test_lora_is_refused_with_the_reason_when_the_edit_is_not_low_rank_linear(sd, tmp_path):
    from unlearning.edit import Edit

    name = next(n for n, p in sd.unet.named_parameters() if n.endswith("norm1.bias"))
    edit = Edit(params={name: dict(sd.unet.named_parameters())[name].detach().float() + 0.1})
    with pytest.raises(InputError, match=r"cannot be written as a LoRA.*not weights of linear layers"):
        export_lora(sd, edit, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    digits = load_adapter("digits", "cpu")
    with pytest.raises(InputError, match="for Stable Diffusion models"):
        export_lora(digits, Edit(params={}), tmp_path / "y.safetensors")


# ---- bundle, card, hub ------------------------------------------------------------------------------------

def test_bundle_holds_model_delta_lora_card(tmp_path):
    folder = tmp_path / "run"
    run = prepare(RunRequest(model="shapes-sd", method="uce", forget=["star"], forget_samples=2, retain_samples=1,
                             num_inference_steps=2))
    list(execute(run, out_dir=folder))
    out, notes = export_bundle(folder, tmp_path / "bundle")
    names = {p.name for p in out.iterdir()}
    assert {"model", "delta.safetensors", "lora.safetensors", "README.md", "run.json"} <= names, names
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "machine-unlearning" in card and "python -m unlearning run" in card
    assert "load_lora_weights" in card and any(n.startswith("LoRA:") for n in notes)
    assert json.loads((out / "run.json").read_text())["method"]["name"] == "uce"
    with pytest.raises(InputError, match="not an empty folder"):
        export_bundle(folder, out)


def test_push_is_refused_when_disallowed_or_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_never_shown")
    with pytest.raises(InputError, match="disabled on this instance") as info:
        push_to_hub(tmp_path, "me/model", allowed=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="offline mode is on") as info2:
        push_to_hub(tmp_path, "me/model", allowed=True)
    for error in (info.value, info2.value):
        assert "hf_secret" not in str(error)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(InputError, match="not a repo id"):
        push_to_hub(tmp_path, "no-owner", allowed=True)
