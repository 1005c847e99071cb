"""Train the shapes-3d twin: a tiny Zero123 on ray-marched renders of simple 3D objects.

    python -m unlearning.embedded.shapes3d train [--minutes 40] [--workdir /tmp/s3d]   (~50 min on 2 cores)
    python -m unlearning.embedded.shapes3d evaluate --write-card                      (PSNR/SSIM vs ground truth)
    python -m unlearning.embedded.shapes3d train --smoke --out /tmp/x                 (seconds; tests)

Data: 8 shapes x 8 colours (render3d.py), each rendered at 32x32 on a grid of polar angles
(``POLARS``) x azimuths every 10 degrees; a training pair is two views of one object and the pose
delta between them. The same renderer gives the ground-truth views the metrics compare against.

Model: the project's Zero123 pipeline (unlearning/models/zero123.py) at tiny width: AutoencoderKL
32x32 <-> 16x16x4 (latents normalised per channel inside quant_conv, as for shapes-sd), a 2-layer
CLIPVisionModelWithProjection (64-d embeddings), CCProjection (68 -> 64), an 8-channel
UNet2DConditionModel (~4 M), cosine-beta DDIM (terminal SNR ~ 0, so samples do not drift to grey).
The VAE is trained first; the image encoder, projection and UNet are trained together on its latents,
dropping the condition (token and concat latent zeroed) 10 % of the time for classifier-free guidance.
EMA weights are saved. Evaluator: shape + colour heads on renders (half of them VAE round trips).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from ..datasets import render3d as r3d
from ..metrics.image import psnr_per_pair, ssim_per_pair
from ..models.evaluator import ImageClassifier
from ..models.zero123 import CCProjection, Zero123, pose_vector
from .shapes import build_vae, fit_shape_colour_evaluator, normalise_latents, vae_round_trip

log = logging.getLogger("unlearning.shapes3d")
ASSETS = Path(__file__).resolve().parents[2] / "assets" / "shapes-3d"
IMAGE_SIZE = 32
EMBED = 64
POLARS = (60.0, 75.0, 90.0)
AZIMUTHS = tuple(float(a) for a in range(0, 360, 10))
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
GUIDANCE = 3.0
STEPS = 32


def build_image_encoder() -> CLIPVisionModelWithProjection:
    cfg = CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=4, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, projection_dim=EMBED, num_channels=3)
    return CLIPVisionModelWithProjection(cfg)


def build_feature_extractor() -> CLIPImageProcessor:
    return CLIPImageProcessor(do_resize=True, size={"shortest_edge": IMAGE_SIZE}, do_center_crop=True,
                              crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_normalize=True,
                              image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True)


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=EMBED, attention_head_dim=8, norm_num_groups=16,
    )


def build_scheduler() -> DDIMScheduler:
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def render_dataset(polars=POLARS, azimuths=AZIMUTHS) -> tuple[np.ndarray, list[r3d.Object3D]]:
    """uint8 (objects, polars, azimuths, 32, 32, 3) and the objects in order."""
    objects = r3d.all_objects()
    views = np.stack([r3d.render_views(o, polars, azimuths, size=IMAGE_SIZE) for o in objects])
    return views, objects


def to_unit(views: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    flat = views.reshape(-1, *views.shape[-3:])
    return torch.from_numpy(flat).permute(0, 3, 1, 2).float() / 255.0


def clip_pixels(images01: torch.Tensor) -> torch.Tensor:
    """What the feature extractor produces for 32x32 inputs (used to precompute training inputs)."""
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    return (images01 - mean) / std


# ---- VAE and evaluator ------------------------------------------------------------------------------
def train_vae(images01: torch.Tensor, *, minutes: float, max_steps: int, seed: int, kl_weight: float = 3e-4):
    torch.manual_seed(seed)
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=1e-5)
    g = torch.Generator().manual_seed(seed)
    x_all = images01 * 2 - 1
    t0, step, losses = time.perf_counter(), 0, []
    while step < max_steps and time.perf_counter() - t0 < minutes * 60:
        progress = max(step / max_steps, (time.perf_counter() - t0) / (minutes * 60))
        for group in opt.param_groups:
            group["lr"] = 1e-3 * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        x = x_all[torch.randint(0, len(x_all), (64,), generator=g)]
        posterior = vae.encode(x).latent_dist
        mse = F.mse_loss(vae.decode(posterior.sample()).sample, x)
        loss = mse + kl_weight * posterior.kl().mean() / x[0].numel()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(mse.item())
        step += 1
        if step % 200 == 0:
            log.info("vae step %d mse %.5f (%.0f s)", step, float(np.mean(losses[-200:])), time.perf_counter() - t0)
    vae.eval().requires_grad_(False)
    stats = normalise_latents(vae, x_all[torch.randperm(len(x_all), generator=g)[:3000]])
    return vae, {"steps": step, "seconds": round(time.perf_counter() - t0, 1), "final_mse_avg200": float(np.mean(losses[-200:])),
                 "kl_weight": kl_weight, **stats}


def train_evaluator(views: np.ndarray, vae, *, epochs: int, seed: int) -> tuple[ImageClassifier, dict]:
    """Shape + colour classifier on renders; half of the training views are VAE round trips, so it
    judges generated (slightly soft) views. Held out: polars 67.5 and 82.5, azimuths 5, 45, ... 325 (never trained on)."""
    torch.manual_seed(seed)
    n_obj, n_pol, n_az = views.shape[:3]
    x = to_unit(views)
    ys = torch.tensor([r3d.SHAPES.index(o.shape) for o in r3d.all_objects()]).repeat_interleave(n_pol * n_az)
    yc = torch.tensor([list(r3d.COLOURS).index(o.colour) for o in r3d.all_objects()]).repeat_interleave(n_pol * n_az)
    half = torch.arange(len(x)) % 2 == 0
    x[half] = vae_round_trip(vae, x[half])
    test_views, _ = render_dataset(polars=(67.5, 82.5), azimuths=tuple(range(5, 360, 40)))
    xt = to_unit(test_views)
    yst = torch.tensor([r3d.SHAPES.index(o.shape) for o in r3d.all_objects()]).repeat_interleave(2 * 9)
    yct = torch.tensor([list(r3d.COLOURS).index(o.colour) for o in r3d.all_objects()]).repeat_interleave(2 * 9)
    heads = [["shape", list(r3d.SHAPES)], ["colour", list(r3d.COLOURS)]]
    return fit_shape_colour_evaluator(x, ys, yc, heads, xt, yst, yct, epochs=epochs, seed=seed, vae=vae)


# ---- the Zero123 model ------------------------------------------------------------------------------
def sample_pairs(n_obj: int, n_pol: int, n_az: int, batch: int, rng: np.random.Generator):
    o = rng.integers(0, n_obj, batch)
    p1, p2 = rng.integers(0, n_pol, batch), rng.integers(0, n_pol, batch)
    a1, a2 = rng.integers(0, n_az, batch), rng.integers(0, n_az, batch)
    return o, p1, a1, p2, a2


def train_model(views: np.ndarray, vae, *, minutes: float, max_steps: int, batch_size: int, seed: int, evaluator, workdir: Path | None):
    torch.manual_seed(seed)
    n_obj, n_pol, n_az = views.shape[:3]
    unet, encoder, proj = build_unet(), build_image_encoder(), CCProjection(EMBED + 4, EMBED)
    noise_sched = DDPMScheduler.from_config(build_scheduler().config)
    x01 = to_unit(views)
    with torch.no_grad():
        dists = [vae.encode(x01[i : i + 500] * 2 - 1).latent_dist for i in range(0, len(x01), 500)]
    lat_mean, lat_std = torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])
    pix = clip_pixels(x01)

    def flat(o, p, a):
        return torch.from_numpy((o * n_pol + p) * n_az + a)

    params = [*unet.parameters(), *encoder.parameters(), *proj.parameters()]
    ema = EMAModel(params, decay=0.999, use_ema_warmup=True)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    rng = np.random.default_rng(seed + 13)
    g = torch.Generator().manual_seed(seed)
    t0, step, losses = time.perf_counter(), 0, []
    while step < max_steps and time.perf_counter() - t0 < minutes * 60:
        progress = max(step / max_steps, (time.perf_counter() - t0) / (minutes * 60))
        for group in opt.param_groups:
            group["lr"] = 1e-3 * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        o, p1, a1, p2, a2 = sample_pairs(n_obj, n_pol, n_az, batch_size, rng)
        src, tgt = flat(o, p1, a1), flat(o, p2, a2)
        pose = pose_vector(np.asarray(POLARS)[p2] - np.asarray(POLARS)[p1], np.asarray(AZIMUTHS)[a2] - np.asarray(AZIMUTHS)[a1])
        token = proj(torch.cat([encoder(pixel_values=pix[src]).image_embeds, pose], -1))[:, None]
        concat = lat_mean[src]
        drop = torch.from_numpy(rng.random(batch_size) < 0.1)
        token = torch.where(drop[:, None, None], torch.zeros_like(token), token)
        concat = torch.where(drop[:, None, None, None], torch.zeros_like(concat), concat)
        x0 = lat_mean[tgt] + lat_std[tgt] * torch.randn(lat_mean[tgt].shape, generator=g)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (batch_size,), generator=g)
        pred = unet(torch.cat([noise_sched.add_noise(x0, noise, t), concat], 1), t, encoder_hidden_states=token).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.step(params)
        losses.append(loss.item())
        step += 1
        if step % 100 == 0:
            log.info("unet step %d loss %.4f (%.0f s)", step, float(np.mean(losses[-100:])), time.perf_counter() - t0)
        if workdir is not None and step % 600 == 0:
            ema.store(params)
            ema.copy_to(params)
            model = assemble(vae, encoder, unet, proj)
            metrics = evaluate_model(model, evaluator, n_objects=16, seed=1, save=workdir / f"probe_{step:05d}.png", steps=16)
            log.info("probe step %d %s", step, metrics)
            ema.restore(params)
    ema.copy_to(params)
    for m in (unet, encoder, proj):
        m.eval().requires_grad_(False)
    report = {"steps": step, "seconds": round(time.perf_counter() - t0, 1), "batch_size": batch_size,
              "final_loss_avg200": float(np.mean(losses[-200:])) if losses else None}
    return unet, encoder, proj, report


def assemble(vae, encoder, unet, proj) -> Zero123:
    return Zero123(vae=vae, image_encoder=encoder, feature_extractor=build_feature_extractor(), unet=unet, scheduler=build_scheduler(),
                   cc_projection=proj)


# ---- sampling and evaluation (ground truth from the renderer) ----------------------------------------
@torch.no_grad()
def generate(model: Zero123, inputs01: torch.Tensor, d_polar, d_azimuth, *, steps: int = STEPS, guidance: float = GUIDANCE,
             seed: int = 0) -> torch.Tensor:
    """Plain DDIM sampling (no skipping): one view per row of (input, d_polar, d_azimuth); images in [0, 1]."""
    embeds, latents = model.encode_images(inputs01)
    cond = model.condition(embeds, latents, pose_vector(d_polar, d_azimuth))
    sched = DDIMScheduler.from_config(model.scheduler.config)
    sched.set_timesteps(steps)
    x = torch.randn((len(cond), *model.latent_shape), generator=torch.Generator().manual_seed(seed))
    for t in sched.timesteps:
        x = sched.step(model.eps(model.unet, x, t, cond, guidance), t, x).prev_sample
    return model.decode(x)


@torch.no_grad()
def evaluate_model(model: Zero123, evaluator, *, n_objects: int = 64, seed: int = 0, save: Path | None = None, steps: int = STEPS,
                   guidance: float = GUIDANCE) -> dict:
    """Input view at (75, random azimuth) -> 4 target views (other polar / azimuth); PSNR / SSIM vs the
    renders and the evaluator's shape / colour accuracy on the generated views."""
    rng = np.random.default_rng(seed)
    objects = r3d.all_objects()
    pick = rng.choice(len(objects), n_objects, replace=False) if n_objects < len(objects) else np.arange(len(objects))
    deltas = [(0.0, 90.0), (0.0, -60.0), (-15.0, 180.0), (15.0, 40.0)]
    inputs, truths, d_pol, d_az, ys, yc = [], [], [], [], [], []
    for k in pick:
        o = objects[k]
        az = float(rng.choice(AZIMUTHS))
        inp = r3d.render(o, 75.0, az, size=IMAGE_SIZE)
        for dp, da in deltas:
            inputs.append(inp)
            truths.append(r3d.render(o, 75.0 + dp, az + da, size=IMAGE_SIZE))
            d_pol.append(dp)
            d_az.append(da)
            ys.append(r3d.SHAPES.index(o.shape))
            yc.append(list(r3d.COLOURS).index(o.colour))
    x_in, x_gt = to_unit(np.stack(inputs)), to_unit(np.stack(truths))
    out = torch.cat([generate(model, x_in[i : i + 64], d_pol[i : i + 64], d_az[i : i + 64], steps=steps, guidance=guidance, seed=seed + i)
                     for i in range(0, len(x_in), 64)])
    heads = evaluator.head_logits(out)
    metrics = {
        "n_views": len(out),
        "psnr": float(np.mean(psnr_per_pair(out, x_gt))),
        "ssim": float(np.mean(ssim_per_pair(out, x_gt))),
        "shape_accuracy": float((heads["shape"].argmax(1) == torch.tensor(ys)).float().mean()),
        "colour_accuracy": float((heads["colour"].argmax(1) == torch.tensor(yc)).float().mean()),
        "input_copy_psnr": float(np.mean(psnr_per_pair(x_in, x_gt))),  # baseline: just return the input view
    }
    if save is not None:
        from PIL import Image

        n = min(8, len(pick)) * len(deltas)
        grid = torch.cat([torch.cat(list(row[:n]), 2) for row in (x_in, x_gt, out)], 1)  # rows: input, truth, generated
        Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(save)
    return metrics


def train_twin(out: Path, *, vae_minutes: float, minutes: float, vae_steps: int, steps: int, batch_size: int, evaluator_epochs: int,
               seed: int, workdir: Path | None, smoke: bool = False) -> dict:
    t_start = time.perf_counter()
    views, _ = render_dataset(polars=POLARS[1:2] if smoke else POLARS, azimuths=AZIMUTHS[::6] if smoke else AZIMUTHS)
    t_render = time.perf_counter() - t_start
    log.info("rendered %s in %.0f s", views.shape, t_render)
    vae, vae_report = train_vae(to_unit(views), minutes=vae_minutes, max_steps=vae_steps, seed=seed)
    t_eval = time.perf_counter()
    evaluator, eval_acc = train_evaluator(views, vae, epochs=evaluator_epochs, seed=seed)
    t_eval = time.perf_counter() - t_eval
    unet, encoder, proj, report = train_model(views, vae, minutes=minutes, max_steps=steps, batch_size=batch_size, seed=seed,
                                              evaluator=evaluator, workdir=workdir)
    model = assemble(vae, encoder, unet, proj)
    for m in (model.vae, model.image_encoder, model.unet, model.cc_projection):
        m.half()
    twin = {"name": "shapes-3d", "num_inference_steps": STEPS, "guidance_scale": GUIDANCE, "image_size": IMAGE_SIZE,
            "polars": list(POLARS), "polar_range": list(r3d.POLAR_RANGE), "radius": r3d.RADIUS,
            "objects": list(r3d.SHAPES), "colours": list(r3d.COLOURS)}
    model.save_pretrained(out)
    evaluator.save_pretrained(out / "evaluator", safe_serialization=True)
    (out / "twin.json").write_text(json.dumps(twin, indent=2) + "\n")
    summary = {
        "total_seconds": round(time.perf_counter() - t_start, 1), "render_seconds": round(t_render, 1),
        "evaluator_seconds": round(t_eval, 1), "evaluator_heldout_accuracy": eval_acc, "vae": vae_report, "unet": report,
        "parameters": {n: sum(p.numel() for p in getattr(model, n).parameters()) for n in ("unet", "vae", "image_encoder", "cc_projection")},
        "seed": seed, "torch": torch.__version__,
    }
    (out / "training_report.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_demo_views(out)
    return summary


DEMO_OBJECTS = ["blue pyramid", "blue cube", "red sphere", "green cylinder", "orange torus", "purple octahedron"]


def write_demo_views(model_dir: Path, size: int = 64) -> list[Path]:
    """Input views (polar 75, azimuth 0) the Zero123 tab offers as examples: assets/shapes-3d/demo/*.png."""
    from PIL import Image

    out = model_dir / "demo"
    out.mkdir(exist_ok=True)
    paths = []
    for name in DEMO_OBJECTS:
        colour, shape = name.split()
        path = out / f"{colour}_{shape}.png"
        Image.fromarray(r3d.render(r3d.Object3D(shape, colour), 75.0, 0.0, size=size)).save(path)
        paths.append(path)
    return paths


def load_evaluator(model_dir: Path) -> ImageClassifier:
    return ImageClassifier.from_pretrained(model_dir / "evaluator").float().eval()


def write_model_card(model_dir: Path, evaluation: dict) -> None:
    report = json.loads((model_dir / "training_report.json").read_text())
    size_mb = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file()) / 1e6
    p = report["parameters"]
    lines = [
        "# shapes-3d: a tiny Zero123 (embedded twin)",
        "",
        "Trained here by `python -m unlearning.embedded.shapes3d train` (seeded) on 32x32 ray-marched renders of 8 shapes x 8",
        "colours (unlearning/datasets/render3d.py), polar angles " + ", ".join(f"{a:g}" for a in POLARS) + " degrees, azimuths every 10",
        "degrees, radius 2. Same layout and conditioning maths as `kxic/zero123-xl` (see unlearning/models/zero123.py), so the",
        "same code loads both.",
        "",
        f"- UNet {p['unet'] / 1e6:.2f} M parameters (8 input channels), VAE {p['vae'] / 1e6:.2f} M (16x16x4 latents, normalised",
        f"  per channel), CLIP vision encoder {p['image_encoder'] / 1e6:.2f} M (64-d embeds), CCProjection 68 -> 64; cosine-beta DDIM,",
        f"  {STEPS} steps, guidance {GUIDANCE}. Weights in fp16 (safetensors), {size_mb:.1f} MB on disk.",
        f"- Training on a 2-core CPU: {report['total_seconds'] / 60:.1f} min in all (renders {report['render_seconds']:.0f} s, VAE "
        f"{report['vae']['seconds'] / 60:.1f} min, evaluator {report['evaluator_seconds'] / 60:.1f} min, Zero123 "
        f"{report['unet']['seconds'] / 60:.1f} min = {report['unet']['steps']} steps of batch {report['unet']['batch_size']}).",
        f"- Evaluator held-out accuracy (renders / VAE round trips): shape {report['evaluator_heldout_accuracy']['shape']:.3f} / "
        f"{report['evaluator_heldout_accuracy']['vae_shape']:.3f}, colour {report['evaluator_heldout_accuracy']['colour']:.3f} / "
        f"{report['evaluator_heldout_accuracy']['vae_colour']:.3f}.",
        "",
        "## Measured novel-view quality",
        "",
        "Input view at polar 75, a random azimuth; four targets (delta polar, delta azimuth) = (0, 90), (0, -60), (-15, 180),",
        f"(15, 40); {evaluation['n_views']} generated views vs the renderer's ground truth, seed 0:",
        "",
        "| | PSNR (dB) | SSIM | shape accuracy | colour accuracy |",
        "|---|---|---|---|---|",
        f"| generated view | {evaluation['psnr']:.2f} | {evaluation['ssim']:.3f} | {evaluation['shape_accuracy']:.3f} | "
        f"{evaluation['colour_accuracy']:.3f} |",
        f"| baseline: the input view copied | {evaluation['input_copy_psnr']:.2f} | | | |",
        "",
        "Sampling: " + f"{evaluation.get('seconds_per_view', float('nan')):.3f} s per view on this CPU (batch of 64, CFG, {STEPS} steps).",
        "",
    ]
    (model_dir / "README.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m unlearning.embedded.shapes3d", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train the shapes-3d twin and its evaluator")
    tr.add_argument("--out", type=Path, default=ASSETS)
    tr.add_argument("--vae-minutes", type=float, default=5.0)
    tr.add_argument("--minutes", type=float, default=40.0, help="wall-clock budget for UNet + image encoder + projection")
    tr.add_argument("--steps", type=int, default=6000)
    tr.add_argument("--batch-size", type=int, default=48)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--workdir", type=Path, default=None, help="write probe grids here while training")
    tr.add_argument("--smoke", action="store_true", help="a few steps only (tests)")
    ev = sub.add_parser("evaluate", help="PSNR / SSIM / evaluator accuracy of generated views vs ground truth")
    ev.add_argument("--model", type=Path, default=ASSETS)
    ev.add_argument("--write-card", action="store_true")
    ev.add_argument("--grid", type=Path, default=None, help="save inputs / ground truth / generated views as a PNG")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "train":
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
        if args.smoke:
            report = train_twin(args.out, vae_minutes=1, minutes=1, vae_steps=3, steps=3, batch_size=4, evaluator_epochs=1,
                                seed=args.seed, workdir=None, smoke=True)
        else:
            report = train_twin(args.out, vae_minutes=args.vae_minutes, minutes=args.minutes, vae_steps=3000, steps=args.steps,
                                batch_size=args.batch_size, evaluator_epochs=4, seed=args.seed, workdir=args.workdir)
        print(json.dumps(report, indent=2))
    else:
        model = Zero123.from_pretrained(args.model, dtype=torch.float32)
        t0 = time.perf_counter()
        evaluation = evaluate_model(model, load_evaluator(args.model), save=args.grid)
        evaluation["seconds_per_view"] = (time.perf_counter() - t0) / evaluation["n_views"]
        print(json.dumps(evaluation, indent=2))
        if args.write_card:
            write_model_card(args.model, evaluation)


if __name__ == "__main__":
    main()
