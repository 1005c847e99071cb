"""The SDXL family on a tiny random SDXL folder built from SDXL's own configuration (the way diffusers tests its
pipelines): loading as a hub snapshot loads, the same images as StableDiffusionXLPipeline, the methods that apply
(ESD, UCE, ScaPre, SalUn), the diffusers export."""

from __future__ import annotations

import json

import pytest
import torch

from unlearning.methods import get_method
from unlearning.methods.base import RunContext, UnlearnTask
from unlearning.models import architectures as A
from unlearning.models.catalog import load_adapter

TASK = UnlearnTask(forget=["nudity"], retain=["a photo of a dog"])


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    folder = A.save_folder("sdxl", tmp_path_factory.mktemp("sdxl") / "sdxl-tiny", tiny=True)
    return folder, load_adapter(str(folder), "cpu")


def fingerprint(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.state_dict().items()}


def unchanged(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(before[n], p) for n, p in module.state_dict().items())


def test_sdxl_folder_loads_like_a_hub_snapshot_and_matches_the_stock_pipeline(sdxl):
    """Same folder, noise, steps and guidance through the adapter and through diffusers' StableDiffusionXLPipeline
    (its DDIM scheduler from the same config): the same images. Two text encoders, pooled embedding, time ids."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    folder, adapter = sdxl
    assert adapter.family == "stable-diffusion-xl" and adapter.encode(["a cat"]).shape == (1, 78, 96)  # 77 tokens + pooled row; 32 + 64
    pipe = StableDiffusionXLPipeline.from_pretrained(str(folder), add_watermarker=False, use_safetensors=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    prompts, seeds = ["a red star", "a blue circle"], [3, 4]
    ours = adapter.generate(prompts, seeds, num_inference_steps=3, guidance_scale=5.0)
    theirs = pipe(prompts, latents=adapter.initial_noise(seeds), num_inference_steps=3, guidance_scale=5.0, output_type="pt").images
    assert ours.shape == theirs.shape == (2, 3, 64, 64)
    assert (ours - theirs.float()).abs().max() < 1e-4


@pytest.mark.parametrize(("method", "settings"), [
    ("esd", {"iterations": 2, "ddim_steps": 4}),
    ("uce", {}),
    ("scapre", {}),
    ("salun", {"iterations": 2, "data_size": 2, "batch_size": 2, "saliency_batches": 1}),
])
def test_sdxl_methods_edit_a_copy(sdxl, method, settings):
    _, adapter = sdxl
    adapter.sampling.num_inference_steps = 2  # self-generated data (SalUn) at 2 steps
    before = fingerprint(adapter.unet)
    spec = get_method(method)
    edit = spec.unlearn(adapter, TASK, spec.settings(None, settings), RunContext())
    assert edit.params and all(torch.isfinite(v).all() for v in edit.params.values())
    if method in ("uce", "scapre"):  # every cross-attention K / V projection reads the 96-wide concatenated text
        assert all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in edit.params)
        assert {v.shape[1] for v in edit.params.values()} == {96}
    assert unchanged(adapter.unet, before)
    with torch.no_grad():
        images = adapter.generate(["nudity"], [0], unet=edit.apply_to_copy(adapter.unet), num_inference_steps=2)
    assert torch.isfinite(images).all()


def test_sdxl_export_is_an_sdxl_folder(sdxl, tmp_path):
    from unlearning.export import export_diffusers

    _, adapter = sdxl
    edit = get_method("uce").unlearn(adapter, TASK, get_method("uce").settings(None, {}), RunContext())
    out = export_diffusers(adapter, edit, tmp_path / "model")
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    assert type(load_adapter(str(out), "cpu")).__name__ == "StableDiffusionXLAdapter"
