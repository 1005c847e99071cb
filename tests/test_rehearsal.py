"""Full-size rehearsal machinery on tiny configs: the published architectures, the memory features (autocast,
gradient checkpointing, shared frozen weights, LoRA), the memory probe and a whole tiny rehearsal through the
CLI. The full-size rehearsals themselves are benchmarks (docs/rehearsal.md); SDXL: tests/test_sdxl.py."""

from __future__ import annotations

import json

import pytest
import torch

from unlearning.cli import main
from unlearning.methods import get_method
from unlearning.methods.base import RunContext, UnlearnTask, trainable_copy
from unlearning.models import architectures as A
from unlearning.models.catalog import load_adapter

TASK = UnlearnTask(forget=["nudity"], retain=["a photo of a dog"])


@pytest.fixture(scope="module")
def sd_bf16(tmp_path_factory):
    folder = A.save_folder("sd15", tmp_path_factory.mktemp("sd15") / "sd15-tiny", tiny=True, dtype=torch.bfloat16)
    return load_adapter(str(folder), "cpu", dtype=torch.bfloat16)


def fingerprint(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.state_dict().items()}


def unchanged(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(before[n], p) for n, p in module.state_dict().items())


# ---- the architectures ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", [*A.names(), A.EVALUATOR])
def test_configs_give_the_published_parameter_counts(name):
    """Counted on the meta device: every component with a published count has exactly that many parameters."""
    spec = A.load_spec(name)
    counts = A.parameter_counts(spec)
    published = {k: v["published_parameters"] for k, v in spec["components"].items() if "published_parameters" in v}
    assert published and {k: counts[k] for k in published} == published
    assert spec["source"] and spec["hub_id"]


def test_generated_tokenizer_has_the_asked_size_and_clip_special_ids():
    tok = A.generated_tokenizer(1000, 77)
    assert len(tok) == 1000 and tok.bos_token_id == 998 and tok.eos_token_id == 999
    ids = tok("a photo of nudity", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == 998 and 999 in ids and max(ids) < 1000


def test_unknown_architecture_is_one_clear_error():
    from unlearning.errors import InputError

    with pytest.raises(InputError, match="unknown architecture 'sd3'"):
        A.load_spec("sd3")


# ---- memory features -------------------------------------------------------------------------------

def test_trained_copy_shares_the_half_precision_base_under_autocast(sd_bf16):
    """bf16 base + bf16 autocast: frozen weights are the base's own tensors, trained ones float32 copies; the loss
    and gradients match the unshared copy's (the same maths), and the base is untouched."""
    adapter = sd_bf16
    settings = get_method("esd").settings(None, {"mixed_precision": "bf16"})
    shared, names = trainable_copy(adapter, "cross_attention", settings)
    base = dict(adapter.unet.named_parameters())
    own = dict(shared.named_parameters())
    assert all(own[n].dtype == torch.float32 and own[n].requires_grad and own[n].data_ptr() != base[n].data_ptr() for n in names)
    frozen = [n for n in own if n not in set(names)]
    assert frozen and all(own[n].data_ptr() == base[n].data_ptr() for n in frozen)
    x = torch.randn(1, *adapter.sample_shape(), generator=torch.Generator().manual_seed(0))
    c = adapter.encode(["nudity"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = adapter.eps(shared, x, 10, c).float().pow(2).mean()
    loss.backward()
    assert all(own[n].grad is not None and torch.isfinite(own[n].grad).all() for n in names)
    assert all(base[n].grad is None for n in base)


@pytest.mark.parametrize("overrides", [
    {"mixed_precision": "bf16", "gradient_checkpointing": True},
    {"mixed_precision": "bf16", "lora_rank": 2},
])
def test_esd_with_memory_features(sd_bf16, overrides):
    adapter = sd_bf16
    before = fingerprint(adapter.unet)
    settings = get_method("esd").settings(None, {"iterations": 2, "ddim_steps": 3, "lr": 1e-3, **overrides})
    edit = get_method("esd").unlearn(adapter, TASK, settings, RunContext())
    assert edit.params and all(torch.isfinite(v).all() for v in edit.params.values())
    assert all(".attn2." in n for n in edit.params)
    assert unchanged(adapter.unet, before)


def test_fp16_autocast_is_refused_on_a_cpu_with_what_to_do(sd_bf16):
    from unlearning.errors import InputError

    settings = get_method("esd").settings(None, {"iterations": 1, "ddim_steps": 2, "mixed_precision": "fp16"})
    with pytest.raises(InputError, match="use bf16 on a CPU"):
        get_method("esd").unlearn(sd_bf16, TASK, settings, RunContext())


def test_lora_edit_is_the_merged_lora(sd_bf16):
    """With lora_rank the edit holds W_0 + B A for each LoRA layer: the edited UNet predicts what the LoRA model does."""
    from unlearning.methods.base import lora_weights

    adapter = sd_bf16
    settings = get_method("esd").settings(None, {"lora_rank": 2, "mixed_precision": "bf16"})
    model, names = trainable_copy(adapter, "cross_attention", settings)
    assert names and all("lora_" in n for n in names)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(n)))
    merged = lora_weights(model, adapter.unet)
    assert set(merged) == {n.split(".lora_")[0] + ".weight" for n in names}
    from unlearning.edit import Edit

    edited = Edit(params=merged).apply_to_copy(adapter.unet).float()
    x = torch.randn(1, *adapter.sample_shape(), generator=torch.Generator().manual_seed(0))
    c = adapter.encode(["nudity"])
    with torch.no_grad():
        want = adapter.eps(model.float().eval(), x, 10, c)
        got = adapter.eps(edited.eval(), x, 10, c)
    assert (want - got).abs().max() < 1e-3


def test_uam_refuses_fp16():
    from unlearning.errors import InputError

    with pytest.raises(InputError, match="bf16"):
        get_method("esd").settings(None, {"uam": True, "retain_weight": 1.0, "mixed_precision": "fp16"})


# ---- the memory probe --------------------------------------------------------------------------------

def test_probe_sorts_weights_grads_optimizer_and_activations():
    from unlearning.memory import MemoryProbe

    layer = torch.nn.Linear(100, 100)
    with MemoryProbe([]) as probe:
        x = torch.randn(8, 100)
        loss = layer(layer(x).relu()).sum()
        loss.backward()
        torch.optim.Adam(layer.parameters()).step()
    parts = probe.parts
    assert parts.weights >= 100 * 101 * 4 and parts.grads == 100 * 101 * 4
    assert parts.optimizer >= 2 * 100 * 101 * 4  # Adam's two moments (+ step counters)
    assert 8 * 100 * 4 <= parts.activations_peak <= 4 * 8 * 100 * 4  # x, the hidden layer, the relu mask; never the weights


def test_probe_keeps_self_attention_maps_apart():
    """Under the math kernel an N x N map over image tokens is saved: it is counted as an attention map (quadratic
    in the pixel count), the rest as linear."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from unlearning.memory import MemoryProbe

    q = torch.randn(1, 2, 64, 8, requires_grad=True)
    with MemoryProbe([], image_tokens={64}) as probe, sdpa_kernel(SDPBackend.MATH):
        F.scaled_dot_product_attention(q, q, q).sum()
    assert probe.parts.attention_maps >= 2 * 64 * 64 * 4
    assert probe.parts.activations < probe.parts.attention_maps


def test_projection_arithmetic():
    from unlearning.memory import MemoryParts, project

    parts = MemoryParts(weights=300, grads=40, optimizer=80, activations_peak=15, activations=10, attention_maps=5,
                        weights_by_role={"base": 200, "other": 100})
    base = {1: (100, torch.bfloat16)}
    got = project(parts, base, measured_dtype=torch.bfloat16, resolution=256, user_resolution=512, upcast_values=10)
    assert got == {"float16": 2 * 100 + 2 * 10 + 100 + 40 + 80 + 10 * 4 + 5 * 16, "bfloat16": 2 * 100 + 100 + 40 + 80 + 10 * 4 + 5 * 16}


# ---- a whole rehearsal ---------------------------------------------------------------------------------

def test_tiny_rehearsal_writes_every_field(tmp_path, capsys):
    assert main(["rehearse", "--arch", "sd15", "--method", "esd", "--tiny", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "esd" / "rehearsal.json").read_text())
    for key in ("arch", "method", "dtype", "resolution", "params", "trainable_params", "load_s", "unlearn_s", "s_per_iteration",
                "peak_rss_bytes", "bytes", "projected_gpu_bytes", "edit_bytes"):
        assert key in r, key
    assert r["arch"] == "sd15-tiny" and r["dtype"] == "bfloat16" and r["resolution"] == 64 and r["iterations"] == 2
    assert set(r["bytes"]) == {"weights", "grads", "optimizer", "activations"} and all(v > 0 for v in r["bytes"].values())
    assert set(r["projected_gpu_bytes"]) == {"float16", "bfloat16"} and r["projection"]["R_user"] == 512
    assert 0 < r["trainable_params"] < r["params"] and r["edit_bytes"] > 0
    assert r["settings"]["mixed_precision"] == "bf16" and r["settings"]["gradient_checkpointing"] is True
    assert r["compare"]["finite"] and "clip_score" in r["compare"]["metrics_that_ran"] and r["compare"]["nudenet"]["images"] == 4
    assert "| sd15-tiny | esd |" in capsys.readouterr().out


def test_tiny_zero123_rehearsal_runs_skip3d_on_two_views(tmp_path):
    assert main(["rehearse", "--arch", "zero123-xl", "--method", "all", "--tiny", "--iterations", "1", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "skip3d" / "rehearsal.json").read_text())
    assert r["method"] == "skip3d" and r["iterations"] == 1 and r["views_per_epoch"] == 4  # 2 azimuths x (forget, remain)
    assert r["settings"]["lora_rank"] == 4 and r["trainable_params"] < r["params_by_component"]["unet"]
    assert r["compare"]["finite"] and r["compare"]["images"][0] == 4
