"""Zero123 family: renderer, pipeline maths and layout, skipping bookkeeping, skip3d, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from unlearning import novel_view as nv
from unlearning.datasets import render3d as r3d
from unlearning.embedded import shapes3d as s3d
from unlearning.errors import InputError
from unlearning.methods.base import build_settings
from unlearning.methods.skip3d import (
    Skip3DSettings,
    ViewTask,
    plan_skipping,
    run_trajectories,
    sample_views,
    unlearn_views,
)
from unlearning.models.catalog import resolve
from unlearning.models.zero123 import CCProjection, Zero123, load_image, pose_vector


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A randomly initialised Zero123 of the twin's shapes, saved in the real checkpoints' layout."""
    torch.manual_seed(0)
    model = s3d.assemble(s3d.build_vae().eval(), s3d.build_image_encoder().eval(), s3d.build_unet().eval(),
                         CCProjection(s3d.EMBED + 4, s3d.EMBED))
    out = tmp_path_factory.mktemp("z123") / "tiny-zero123"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    return Zero123.from_pretrained(tiny_folder)


def unit(obj: str, azimuth: float = 0.0) -> torch.Tensor:
    colour, shape = obj.split()
    return s3d.to_unit(r3d.render(r3d.Object3D(shape, colour), 75.0, azimuth)[None])


# ---- renderer ------------------------------------------------------------------------------------------
def test_renderer_draws_objects_on_white_and_turns_with_the_camera():
    cube0, cube45 = (r3d.render(r3d.Object3D("cube", "red"), 75, a, size=32) for a in (0, 45))
    assert cube0.shape == (32, 32, 3) and cube0.dtype == np.uint8
    assert (cube0[0, 0] == 255).all() and (cube0[-1, -1] == 255).all()  # background corners
    assert (cube0.astype(int).sum(-1) < 600).mean() > 0.15  # a sizeable object in the middle
    assert np.abs(cube0.astype(int) - cube45.astype(int)).mean() > 3  # a cube looks different from another azimuth
    red = cube0[16, 16].astype(int)
    assert red[0] > red[1] + 40 and red[0] > red[2] + 40


@pytest.mark.parametrize("shape", r3d.SHAPES)
def test_every_shape_renders_something(shape):
    img = r3d.render(r3d.Object3D(shape, "blue"), 75, 30, size=24)
    assert 0.03 < (img.astype(int).sum(-1) < 700).mean() < 0.9


def test_renderer_rejects_bad_cameras_and_objects():
    with pytest.raises(ValueError, match="polar"):
        r3d.render(r3d.Object3D("cube", "red"), 0.0, 0.0)
    with pytest.raises(ValueError, match="radius"):
        r3d.render(r3d.Object3D("cube", "red"), 75.0, 0.0, radius=0.5)
    with pytest.raises(ValueError, match="unknown shape"):
        r3d.Object3D("teapot", "red")


# ---- pipeline maths and layout --------------------------------------------------------------------------
def test_pose_vector_is_polar_radians_then_sin_cos_azimuth_then_radius():
    v = pose_vector([15.0, 0.0], [90.0, 180.0], 0.5)
    assert torch.allclose(v[0], torch.tensor([np.radians(15.0), 1.0, 0.0, 0.5], dtype=torch.float32), atol=1e-6)
    assert torch.allclose(v[1], torch.tensor([0.0, 0.0, -1.0, 0.5]), atol=1e-6)


def test_saved_layout_matches_the_real_checkpoints(tiny_folder):
    index = json.loads((tiny_folder / "model_index.json").read_text())
    assert index["cc_projection"] == ["pipeline_zero1to3", "CCProjection"]
    assert index["image_encoder"] == ["transformers", "CLIPVisionModelWithProjection"]
    for sub in ("vae", "image_encoder", "unet", "cc_projection", "scheduler", "feature_extractor"):
        assert (tiny_folder / sub).is_dir()
    assert not list(tiny_folder.rglob("*.bin")) and list(tiny_folder.rglob("*.safetensors"))
    proj = CCProjection.from_pretrained(tiny_folder / "cc_projection")
    assert set(dict(proj.named_parameters())) == {"projection.weight", "projection.bias"}  # the real names


def test_condition_is_projected_clip_embedding_plus_pose_and_unscaled_latent_mode(tiny):
    image = unit("green cone")
    embeds, latents = tiny.encode_images(image)
    with torch.no_grad():
        mode = tiny.vae.encode(image * 2 - 1).latent_dist.mode()
        cond = tiny.condition(embeds, latents, pose_vector(0.0, [0.0, 90.0]))
        expect = tiny.cc_projection(torch.cat([embeds.expand(2, -1), pose_vector(0.0, [0.0, 90.0])], -1))
    assert torch.allclose(latents, mode)  # posterior mode, no scaling factor
    assert cond.token.shape == (2, 1, s3d.EMBED) and torch.allclose(cond.token[:, 0], expect)
    assert cond.latent.shape == (2, 4, 16, 16)


def test_guidance_zeroes_both_the_token_and_the_concat_latent(tiny):
    image = unit("green cone")
    with torch.no_grad():
        cond = tiny.condition(*tiny.encode_images(image), pose_vector(0.0, 30.0))
        x = torch.randn(1, 4, 16, 16)
        e_c = tiny.eps(tiny.unet, x, 500, cond, 1.0)
        e_u = tiny.unet(torch.cat([x, torch.zeros_like(cond.latent)], 1), 500, encoder_hidden_states=torch.zeros_like(cond.token)).sample
        guided = tiny.eps(tiny.unet, x, 500, cond, 3.0)
    assert torch.allclose(guided, e_u + 3.0 * (e_c - e_u), atol=1e-5)


def test_loading_rejects_what_is_not_zero123(tmp_path, tiny_folder):
    with pytest.raises(InputError, match="not a loadable Zero123"):
        Zero123.from_pretrained(tmp_path)
    with pytest.raises(InputError, match="Zero123 tab"):  # the text-to-image tab points to the right place
        resolve(str(tiny_folder))
    with pytest.raises(InputError, match="no model_index.json"):
        nv.resolve(str(tmp_path))
    with pytest.raises(InputError, match="unknown Zero123 model"):
        nv.resolve("no-such-model")


def test_input_images_are_composited_padded_and_resized_with_notes(tmp_path):
    rgba = Image.new("RGBA", (60, 40), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (20, 10, 40, 30))
    img, notes = load_image(rgba, 32)
    assert img.shape == (1, 3, 32, 32)
    assert any("composited on white" in n for n in notes) and any("padded" in n for n in notes) and any("resized" in n for n in notes)
    assert img[0, :, 0, 0].min() > 0.99  # transparent corner became white, not red
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(InputError, match="is not an image"):  # file uploads go through images.load_upload's checks
        load_image(bad, 32)
    png = tmp_path / "view.png"
    rgba.save(png)
    from_file, file_notes = load_image(png, 32)
    assert torch.allclose(from_file, img, atol=2 / 255) and any("composited onto white" in n for n in file_notes)
    with pytest.raises(InputError, match="at least 8x8"):
        load_image(Image.new("RGB", (4, 4)), 32)
    with pytest.raises(InputError, match="must be an image"):
        load_image(3.5, 32)


# ---- skipping -----------------------------------------------------------------------------------------
def test_plan_picks_evenly_spaced_references_and_blends_the_two_most_similar():
    az = [float(a) for a in range(0, 360, 30)]
    plan = plan_skipping(az, None, n_ref=4, skip=12)
    assert [az[r] for r in plan.references] == [0.0, 90.0, 180.0, 270.0]
    a, b, wa, wb = plan.blend[az.index(60.0)]
    assert {az[plan.references[a]], az[plan.references[b]]} == {90.0, 0.0} and wa > wb  # 60 is nearer 90 than 0
    assert all(abs(v[2] + v[3] - 1) < 1e-6 for v in plan.blend.values())
    dyn = plan_skipping(az, None, n_ref=4, skip=12, dynamic=True, skip_near=16, skip_far=8, tau=20.0)
    assert dyn.jump[az.index(30.0)] == 8  # 30 degrees from the nearest reference: far
    with pytest.raises(InputError, match="must not exceed"):
        plan_skipping(az[:3], None, n_ref=4, skip=12)


def test_skip_zero_equals_plain_and_skipping_saves_exactly_the_skipped_steps(tiny):
    image = unit("yellow cube")
    cond = tiny.condition(*tiny.encode_images(image), pose_vector(0.0, [0.0, 60.0, 120.0, 180.0, 240.0, 300.0]))
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    plain, info_p = run_trajectories(tiny, tiny.unet, cond, steps=6, guidance=3.0, noise=noise, plan=None)
    zero = plan_skipping([0.0, 60.0, 120.0, 180.0, 240.0, 300.0], cond.token, n_ref=2, skip=0)
    same, _ = run_trajectories(tiny, tiny.unet, cond, steps=6, guidance=3.0, noise=noise, plan=zero)
    assert torch.allclose(plain, same, atol=1e-5)
    plan = plan_skipping([0.0, 60.0, 120.0, 180.0, 240.0, 300.0], cond.token, n_ref=2, skip=4)
    skipped, info_s = run_trajectories(tiny, tiny.unet, cond, steps=6, guidance=3.0, noise=noise, plan=plan)
    assert info_p["unet_evals"] == 6 * 6 and info_s["unet_evals"] == 2 * 6 + 4 * (6 - 4)
    assert torch.allclose(skipped[plan.references], plain[plan.references], atol=1e-5)  # references run the full trajectory


def test_settings_reject_impossible_values():
    with pytest.raises(InputError, match="below the number of steps"):
        build_settings(Skip3DSettings, {}, {"skip": 32})
    with pytest.raises(InputError, match="n_ref"):
        build_settings(Skip3DSettings, {}, {"n_ref": 8, "azimuth_step": 90})
    with pytest.raises(InputError, match="t_min"):
        build_settings(Skip3DSettings, {}, {"t_min": 500, "t_max": 400})
    with pytest.raises(InputError, match="target"):
        build_settings(Skip3DSettings, {}, {"target": "nothing"})


# ---- the method and the run ---------------------------------------------------------------------------
def test_skip3d_trains_a_copy_and_leaves_the_base_model_untouched(tiny):
    before = {k: v.clone() for k, v in tiny.unet.state_dict().items()}
    settings = build_settings(Skip3DSettings, {}, {"epochs": 1, "steps": 4, "skip": 2, "n_ref": 2, "azimuth_step": 90.0,
                                                   "lr_gen": 1e-3, "lr_fake": 1e-3, "mu": 1.0})
    task = ViewTask(unit("blue pyramid"), unit("blue cube"), [unit("red sphere")])
    result = unlearn_views(tiny, task, settings)
    assert all(torch.equal(v, tiny.unet.state_dict()[k]) for k, v in before.items())
    changed = sum(not torch.equal(p.float(), before[n].float()) for n, p in result.unet.named_parameters())
    assert changed > 0 and all(np.isfinite(e["loss"]) for e in result.log)
    assert result.timings["unet_evals"] < 2 * 4 * 4  # 2 inputs x 4 views x 4 steps without skipping
    views, info = sample_views(tiny, result.unet, unit("blue pyramid"), [0.0, 90.0], steps=4)
    assert views.shape == (2, 3, 32, 32) and views.min() >= 0 and views.max() <= 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"forget": "blue pyramid", "override": "blue pyramid", "remain": ["red sphere"]}, "same as the forget"),
        ({"forget": "blue pyramid", "override": "blue cube", "remain": []}, "remain set is empty"),
        ({"forget": "blue pyramid", "override": "blue cube", "remain": ["blue pyramid"]}, "also in the remain"),
        ({"forget": "teapot", "override": "blue cube", "remain": ["red sphere"]}, "colour"),
        ({"forget": "", "override": "blue cube", "remain": ["red sphere"]}, "no forget object"),
        ({"forget": "blue pyramid", "override": "blue cube", "remain": ["red sphere"], "input_polar": 10.0}, "outside the supported"),
    ],
)
def test_bad_run_inputs_get_clear_messages(tiny, kwargs, message):
    with pytest.raises(InputError, match=message):
        nv.make_inputs(tiny, **{"input_polar": 75.0, **kwargs})


def test_erase_to_background_needs_no_override(tiny):
    inputs = nv.make_inputs(tiny, forget="blue pyramid", override=None, remain=["red sphere"], input_polar=75.0, target="background")
    assert inputs.override.min() == 1.0 and any("background" in n for n in inputs.notes)


# ---- the embedded twin (assets/shapes-3d) -------------------------------------------------------------
def test_twin_loads_through_the_same_code_and_draws_the_object_from_other_views():
    model_id, twin = nv.load("shapes-3d")
    assert model_id == "shapes-3d" and twin.unet.config.in_channels == 8
    objects = ["red sphere", "blue cube", "yellow cylinder", "green cone"]
    inputs = torch.cat([unit(o) for o in objects for _ in range(2)])
    views = s3d.generate(twin, inputs, [0.0, 0.0] * 4, [90.0, -60.0] * 4, seed=0)
    heads = nv.load_evaluator("shapes-3d").head_logits(views)
    shapes = torch.tensor([r3d.SHAPES.index(o.split()[1]) for o in objects for _ in range(2)])
    colours = torch.tensor([list(r3d.COLOURS).index(o.split()[0]) for o in objects for _ in range(2)])
    assert (heads["shape"].argmax(1) == shapes).float().mean() >= 0.6
    assert (heads["colour"].argmax(1) == colours).float().mean() >= 0.8


def test_skip3d_on_the_twin_moves_forget_views_towards_the_override_and_keeps_remain_views():
    """The twin-tuned run (seed 0): forget views' SSIM to the override's ground-truth renders goes up, remain
    views stay within 0.06 SSIM of the original model's (measured: 0.316 -> 0.368, remain -0.03 / -0.02)."""
    result = nv.run("shapes-3d", forget="blue pyramid", override="blue cube", remain=["red sphere", "green cylinder"],
                    compare_plain=False, sampling_skips=())
    ssim = {(m["views"], m["model"], m["against"].split()[0]): m["ssim"] for m in result["metrics"]}
    assert ssim[("forget", "unlearned", "override")] > ssim[("forget", "original", "override")] + 0.02
    for r in ("remain 1", "remain 2"):
        assert ssim[(r, "unlearned", "own")] > ssim[(r, "original", "own")] - 0.06
    assert result["timings"]["unet_evals_skipping"] > 0 and result["loss_log"]


def test_tab_helpers_map_tiles_to_pairs_and_plot_only_readable_curves():
    from unlearning.ui import zero123 as uz

    state = {"view_azimuths": [0.0, 90.0], "grids": {"forget": {"original": ["o0", "o1"], "unlearned": ["u0", "u1"]},
                                                      "remain 1": {"original": ["r0", "r1"], "unlearned": ["s0", "s1"]}}}
    assert uz.tile_pair(state, 0) is None  # the input-view column
    assert uz.tile_pair(state, 2) == ("o1", "u1")
    assert uz.tile_pair(state, 3 + 1) == ("o0", "u0")  # the forget's unlearned row: same pair
    assert uz.tile_pair(state, 6 + 2) == ("r1", "s1")
    log = [{"step": 1, "loss": -1e4, "fake_loss": 0.3, "forget_gap": 0.5}, {"step": 2, "loss": -2e4, "fake_loss": 0.2, "forget_gap": float("nan")}]
    frame = uz.loss_frame({"loss_log": log})
    assert len(frame) == 3 and frame["value"].dtype == float and frame["value"].abs().max() < 1  # no surrogate loss
    assert len(uz.loss_frame(None)) == 0
