"""The shapes-sd twin: a tiny Stable Diffusion built from the real pipeline classes.

    python -m unlearning.embedded.shapes train [--out assets/shapes-sd] [--minutes 45] [--smoke]
    python -m unlearning.embedded.shapes evaluate [--model assets/shapes-sd] [--write-card]

Components (saved by ``StableDiffusionPipeline.save_pretrained``, so the folder has the layout of a
hub snapshot and loads with ``StableDiffusionPipeline.from_pretrained``):
    tokenizer/     CLIPTokenizer; byte-level BPE whose merges spell every caption word as one token
                   (generated here from ``shapes_data.CAPTION_WORDS``; other words fall back to pieces)
    text_encoder/  CLIPTextModel, 2 layers, width 64, 16 positions (the tokenizer limit)
    vae/           AutoencoderKL, 2 levels: 32x32x3 images <-> 16x16x4 latents. Trained first, then its
                   latents are normalised per channel (mean 0, std 1) by folding the statistics into
                   ``quant_conv`` / ``post_quant_conv``, so ``scaling_factor`` is 1 and no shift is needed
                   (StableDiffusionPipeline knows no shift factor).
    unet/          UNet2DConditionModel on the latents, cross-attention dim 64, trained jointly with the
                   text encoder (prompt dropped to "" 10 % of the time for classifier-free guidance).
    scheduler/     DDIMScheduler config over the cosine (``squaredcos_cap_v2``) betas: terminal SNR ~ 0,
                   so samples do not drift to the mean image as with SD's ``scaled_linear`` (measured
                   note in EMBEDDED_MODELS.md).
    evaluator/     ImageClassifier with a shape head and a colour head (forget / retain scores).
Weights are stored in fp16 to fit the 20 MB budget; adapters load them in fp32 on CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .. import paths
from ..atomic import normal_permissions
from ..datasets import shapes as data
from ..models.evaluator import ImageClassifier

log = logging.getLogger(__name__)

ASSETS = paths.ASSETS / "shapes-sd"
MAX_TOKENS = 16
TEXT_WIDTH = 64


# ---- tokenizer ---------------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet: every byte maps to a printable unicode character."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def build_tokenizer(words: list[str] = data.CAPTION_WORDS) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is the byte alphabet (with and without ``</w>``) plus the
    merges that build each word in ``words`` left to right, so each becomes one token."""
    alphabet = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for nxt in pieces[1:]:
            merge = (current, nxt)
            if merge not in merges:
                merges.append(merge)
            current = current + nxt
            vocab.setdefault(current, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = MAX_TOKENS
    return tok


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_WIDTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=data.IMAGE_SIZE,
        scaling_factor=1.0,
    )


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=data.IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def build_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,  # what StableDiffusionPipeline enforces on load
    )


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


# ---- evaluator ----------------------------------------------------------------------------------
def label_arrays(specs: list[data.ShapeSpec]) -> tuple[torch.Tensor, torch.Tensor]:
    colours = list(data.COLOURS)
    return (torch.tensor([data.SHAPES.index(s.shape) for s in specs]), torch.tensor([colours.index(s.colour) for s in specs]))


EVALUATOR_TINT = 40  # background shade jitter (foreground: a third of it) in evaluator training data


@torch.no_grad()
def vae_round_trip(vae: AutoencoderKL | None, images01: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] through the twin's VAE (encode, decode): the softness generated images have."""
    if vae is None:
        return images01
    out = [vae.decode(vae.encode(images01[i : i + 500] * 2 - 1).latent_dist.mean).sample for i in range(0, len(images01), 500)]
    return ((torch.cat(out).clamp(-1, 1) + 1) / 2).float()


def train_evaluator(*, n_train: int, epochs: int, seed: int, vae: AutoencoderKL | None = None,
                    test_size: int = 2000) -> tuple[ImageClassifier, dict]:
    """Shape + colour classifier. Its training images vary the background and foreground shades the
    captions do not name, and half of them went through the twin's VAE, so it judges generated images
    (slightly soft, tinted backgrounds) by shape and colour rather than by pixel-exact rendering.
    Held-out accuracy is reported on plain renders and on VAE round trips."""
    torch.manual_seed(seed)
    images, specs = data.dataset(n_train, seed=seed + 101, tint=EVALUATOR_TINT)
    test_images, test_specs = data.dataset(test_size, seed=seed + 202)
    x, (ys, yc) = to_tensor(images) * 0.5 + 0.5, label_arrays(specs)
    if vae is not None:
        half = torch.arange(n_train) % 2 == 0
        x[half] = vae_round_trip(vae, x[half])
    xt, (yst, yct) = to_tensor(test_images) * 0.5 + 0.5, label_arrays(test_specs)
    heads = [["shape", list(data.SHAPES)], ["colour", list(data.COLOURS)]]  # output order
    return fit_shape_colour_evaluator(x, ys, yc, heads, xt, yst, yct, epochs=epochs, seed=seed, vae=vae)


def fit_shape_colour_evaluator(x, ys, yc, heads, xt, yst, yct, *, epochs: int, seed: int, vae: AutoencoderKL | None = None
                               ) -> tuple[ImageClassifier, dict]:
    """Train a two-head (shape, colour) ImageClassifier on images ``x`` in [0, 1] with labels ``ys``/``yc``;
    held-out accuracy on ``xt`` (and on its VAE round trips when ``vae`` is given). Shared by the shapes-sd
    and shapes-3d evaluators."""
    model = ImageClassifier(in_channels=3, num_classes=16, widths=(32, 64, 96), feature_dim=64, class_names=None, heads=heads)
    n_train = len(x)
    steps = epochs * math.ceil(n_train / 128)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n_train, generator=g)
        for i in range(0, n_train, 128):
            idx = perm[i : i + 128]
            out = model.head_logits(x[idx])
            loss = F.cross_entropy(out["shape"], ys[idx]) + F.cross_entropy(out["colour"], yc[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    acc = {}
    with torch.no_grad():
        for name, xs in (("", xt), ("vae_", vae_round_trip(vae, xt) if vae is not None else None)):
            if xs is None:
                continue
            out = model.head_logits(xs)
            acc[f"{name}shape"] = float((out["shape"].argmax(1) == yst).float().mean())
            acc[f"{name}colour"] = float((out["colour"].argmax(1) == yct).float().mean())
    log.info("evaluator held-out accuracy %s", acc)
    return model, acc


# ---- VAE ------------------------------------------------------------------------------------------
def train_vae(*, minutes: float, max_steps: int, batch_size: int, seed: int, kl_weight: float = 3e-4,
              pool_size: int = 20000, test_size: int = 1000) -> tuple[AutoencoderKL, dict]:
    torch.manual_seed(seed)
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=1e-5)
    rng = np.random.default_rng(seed + 7)
    pool, _ = data.dataset(pool_size, seed=seed + 7)
    pool = to_tensor(pool)
    t0, step, losses = time.perf_counter(), 0, []
    while step < max_steps and time.perf_counter() - t0 < minutes * 60:
        lr = 1e-3 * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max_steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        x = pool[torch.from_numpy(rng.integers(0, len(pool), batch_size))]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        mse = F.mse_loss(recon, x)
        kl = posterior.kl().mean() / x[0].numel()  # per pixel value, as the reconstruction term
        loss = mse + kl_weight * kl
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(mse.item())
        step += 1
        if step % 200 == 0:
            log.info("vae step %d mse %.5f kl %.3f (%.0f s)", step, float(np.mean(losses[-200:])), kl.item(), time.perf_counter() - t0)
    vae.eval()
    test, _ = data.dataset(test_size, seed=seed + 303)
    test = to_tensor(test)
    with torch.no_grad():
        test_mse = float(F.mse_loss(vae.decode(vae.encode(test).latent_dist.mean).sample, test))
    stats = normalise_latents(vae, pool[:4000])
    report = {"steps": step, "seconds": round(time.perf_counter() - t0, 1), "heldout_mse": test_mse, "kl_weight": kl_weight, **stats}
    log.info("vae %s", report)
    return vae, report


@torch.no_grad()
def normalise_latents(vae: AutoencoderKL, images: torch.Tensor) -> dict:
    """Fold per-channel latent mean m and std s into the VAE, so its latents are ~N(0, 1) per channel.

    quant_conv outputs [mean, logvar]: mean' = (mean - m) / s, logvar' = logvar - 2 log s.
    post_quant_conv sees z = z' s + m: W' = W diag(s), b' = b + W m. Decoding is unchanged.
    """
    mean = torch.cat([vae.encode(images[i : i + 500]).latent_dist.mean for i in range(0, len(images), 500)])
    m, s = mean.mean(dim=(0, 2, 3)), mean.std(dim=(0, 2, 3))
    c = vae.config.latent_channels
    q, p = vae.quant_conv, vae.post_quant_conv
    q.weight[:c] /= s[:, None, None, None]
    q.bias[:c] = (q.bias[:c] - m) / s
    q.bias[c:] -= 2 * torch.log(s)
    p.bias += (p.weight[:, :, 0, 0] @ m)
    p.weight *= s[None, :, None, None]
    return {"latent_mean_before": m.tolist(), "latent_std_before": s.tolist()}


# ---- text-to-image model ---------------------------------------------------------------------------
@torch.no_grad()
def sample_grid(pipe_parts: dict, prompts: list[str], seed: int, steps: int = 25, guidance: float = 3.0) -> torch.Tensor:
    """Images in [0, 1] for prompts, with the components in ``pipe_parts`` (used during training)."""
    tok, te, unet, vae = pipe_parts["tokenizer"], pipe_parts["text_encoder"], pipe_parts["unet"], pipe_parts["vae"]
    sched = build_scheduler()
    sched.set_timesteps(steps)
    ids = tok(prompts + [""] * len(prompts), padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
    cond = te(ids)[0]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((len(prompts), 4, data.IMAGE_SIZE // 2, data.IMAGE_SIZE // 2), generator=g)
    for t in sched.timesteps:
        e_c, e_u = unet(torch.cat([x, x]), t, encoder_hidden_states=cond).sample.chunk(2)
        x = sched.step(e_u + guidance * (e_c - e_u), t, x).prev_sample
    return (vae.decode(x).sample.clamp(-1, 1) + 1) / 2


def train_unet(vae, tokenizer, *, minutes: float, max_steps: int, batch_size: int, seed: int, n_images: int, evaluator, workdir: Path | None):
    torch.manual_seed(seed)
    unet, text_encoder = build_unet(), build_text_encoder(tokenizer)
    noise_sched = DDPMScheduler.from_config(build_scheduler().config)
    images, specs = data.dataset(n_images, seed=seed + 11)
    with torch.no_grad():
        dists = [vae.encode(to_tensor(images[i : i + 500])).latent_dist for i in range(0, n_images, 500)]
    lat_mean = torch.cat([d.mean for d in dists])
    lat_std = torch.cat([d.std for d in dists])
    log.info("latents %s mean %.3f std %.3f", tuple(lat_mean.shape), lat_mean.mean().item(), lat_mean.std().item())
    params = [*unet.parameters(), *text_encoder.parameters()]
    ema = EMAModel(params, decay=0.999, use_ema_warmup=True)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    rng = np.random.default_rng(seed + 13)
    g = torch.Generator().manual_seed(seed)
    t0, step, losses = time.perf_counter(), 0, []
    probe_prompts = [f"a {c} {s}" for c, s in zip(["red", "blue", "yellow", "green", "purple", "orange", "white", "black"], data.SHAPES, strict=True)]
    while step < max_steps and time.perf_counter() - t0 < minutes * 60:
        lr = 1e-3 * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max_steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = rng.integers(0, n_images, batch_size)
        captions = [data.caption(specs[i], rng) if rng.random() >= 0.1 else "" for i in idx]
        ids = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
        idx_t = torch.from_numpy(idx)
        x0 = lat_mean[idx_t] + lat_std[idx_t] * torch.randn(lat_mean[idx_t].shape, generator=g)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (batch_size,), generator=g)
        pred = unet(noise_sched.add_noise(x0, noise, t), t, encoder_hidden_states=text_encoder(ids)[0]).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.step(params)
        losses.append(loss.item())
        step += 1
        if step % 200 == 0:
            log.info("unet step %d loss %.4f (%.0f s)", step, float(np.mean(losses[-200:])), time.perf_counter() - t0)
        if workdir is not None and step % 1000 == 0:
            probe(ema, params, unet, text_encoder, tokenizer, vae, evaluator, probe_prompts, workdir, step)
    ema.copy_to(params)
    unet.eval()
    text_encoder.eval()
    report = {
        "steps": step,
        "seconds": round(time.perf_counter() - t0, 1),
        "batch_size": batch_size,
        "n_images": n_images,
        "final_loss_avg200": float(np.mean(losses[-200:])) if losses else None,
    }
    return unet, text_encoder, report


def probe(ema, params, unet, text_encoder, tokenizer, vae, evaluator, prompts, workdir: Path, step: int) -> None:
    """Sample with the EMA weights (restored afterwards), save a grid, log evaluator accuracy."""
    from PIL import Image

    ema.store(params)
    ema.copy_to(params)
    unet.eval()
    text_encoder.eval()
    parts = {"tokenizer": tokenizer, "text_encoder": text_encoder, "unet": unet, "vae": vae}
    images = sample_grid(parts, prompts * 4, seed=step)
    with torch.no_grad():
        out = evaluator.head_logits(images)
    colours = list(data.COLOURS)
    want_s = torch.tensor([data.SHAPES.index(p.split()[-1]) for p in prompts * 4])
    want_c = torch.tensor([colours.index(p.split()[1]) for p in prompts * 4])
    acc_s = (out["shape"].argmax(1) == want_s).float().mean().item()
    acc_c = (out["colour"].argmax(1) == want_c).float().mean().item()
    log.info("probe step %d: shape acc %.2f colour acc %.2f", step, acc_s, acc_c)
    grid = images.reshape(4, 8, 3, 32, 32).permute(0, 3, 1, 4, 2).reshape(4 * 32, 8 * 32, 3)
    Image.fromarray((grid.numpy() * 255).round().astype(np.uint8)).resize((8 * 96, 4 * 96), Image.NEAREST).save(workdir / f"probe-{step:06d}.png")
    ema.restore(params)
    unet.train()
    text_encoder.train()


def train_twin(out: Path, *, vae_minutes: float, unet_minutes: float, vae_steps: int, unet_steps: int, batch_size: int, n_images: int,
               evaluator_images: int, evaluator_epochs: int, seed: int, workdir: Path | None, smoke: bool = False) -> dict:
    """``smoke``: small data pools and test sets too (the test suite's check that the script writes a loadable folder)."""
    t_start = time.perf_counter()
    sizes = {"pool_size": 512, "test_size": 64} if smoke else {}
    vae, vae_report = train_vae(minutes=vae_minutes, max_steps=vae_steps, batch_size=64, seed=seed, **sizes)
    for p in vae.parameters():
        p.requires_grad_(False)
    t_eval = time.perf_counter()
    evaluator, eval_acc = train_evaluator(n_train=evaluator_images, epochs=evaluator_epochs, seed=seed, vae=vae,
                                          **({"test_size": 64} if smoke else {}))
    t_eval = time.perf_counter() - t_eval
    tokenizer = build_tokenizer()
    unet, text_encoder, unet_report = train_unet(
        vae, tokenizer, minutes=unet_minutes, max_steps=unet_steps, batch_size=batch_size, seed=seed, n_images=n_images,
        evaluator=evaluator, workdir=workdir,
    )
    pipe = StableDiffusionPipeline(
        vae=vae.half(), text_encoder=text_encoder.half(), tokenizer=tokenizer, unet=unet.half(), scheduler=build_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".shapes-sd-", dir=out.parent))
    pipe.save_pretrained(tmp, safe_serialization=True)
    evaluator.save_pretrained(tmp / "evaluator", safe_serialization=True)
    twin = {
        "name": "shapes-sd",
        "dataset": "shapes",
        "num_inference_steps": 25,
        "guidance_scale": 5.0,
        "vocabulary": {"objects": list(data.SHAPES), "attributes": list(data.COLOURS)},
    }
    (tmp / "twin.json").write_text(json.dumps(twin, indent=2) + "\n")
    report = {
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "evaluator_seconds": round(t_eval, 1),
        "evaluator_heldout_accuracy": eval_acc,
        "vae": vae_report,
        "unet": unet_report,
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "vae_parameters": sum(p.numel() for p in vae.parameters()),
        "text_encoder_parameters": sum(p.numel() for p in text_encoder.parameters()),
        "seed": seed,
        "torch": torch.__version__,
    }
    (tmp / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    normal_permissions(tmp)  # mkdtemp made it 0700
    tmp.rename(out)
    return report


def retrain_evaluator(model_dir: Path, *, epochs: int, n_images: int, seed: int) -> dict:
    """Train a new evaluator against the folder's VAE and swap it in atomically; record it in the report."""
    model_dir = Path(model_dir)
    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", use_safetensors=True, dtype=torch.float32).eval()
    t0 = time.perf_counter()
    evaluator, acc = train_evaluator(n_train=n_images, epochs=epochs, seed=seed, vae=vae)
    seconds = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp(prefix=".evaluator-", dir=model_dir))
    evaluator.save_pretrained(tmp, safe_serialization=True)
    old = model_dir / "evaluator"
    if old.exists():
        shutil.rmtree(old)
    normal_permissions(tmp)
    tmp.rename(old)
    report_path = model_dir / "training_report.json"
    report = json.loads(report_path.read_text())
    report["evaluator_heldout_accuracy"] = acc
    report["evaluator_seconds"] = round(seconds, 1)
    report["evaluator_training"] = {"epochs": epochs, "images": n_images, "tint": EVALUATOR_TINT, "vae_round_trip": 0.5, "seed": seed}
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return acc


@torch.no_grad()
def evaluate_twin(model_dir: Path, per_prompt: int = 8, guidance_scales=(1.0, 3.0, 5.0)) -> dict:
    """Evaluator accuracy on the twin's own samples: shape and colour for "a {colour} {shape}"
    (64 prompts), shape for "a {shape}"; per guidance scale."""
    from ..models.sd import StableDiffusionAdapter

    adapter = StableDiffusionAdapter(str(model_dir), torch.device("cpu"))
    colours = list(data.COLOURS)
    result = {}
    for w in guidance_scales:
        prompts, want_s, want_c = [], [], []
        for s in data.SHAPES:
            for c in colours:
                prompts += [f"a {c} {s}"] * per_prompt
                want_s += [data.SHAPES.index(s)] * per_prompt
                want_c += [colours.index(c)] * per_prompt
        t0 = time.perf_counter()
        images = torch.cat([adapter.generate(prompts[i : i + 64], list(range(i, min(i + 64, len(prompts)))), guidance_scale=w) for i in range(0, len(prompts), 64)])
        elapsed = time.perf_counter() - t0
        out = adapter.evaluator.head_logits(images)
        ps, pc = out["shape"].argmax(1), out["colour"].argmax(1)
        ws, wc = torch.tensor(want_s), torch.tensor(want_c)
        per_shape = {s: float((ps[ws == i] == i).float().mean()) for i, s in enumerate(data.SHAPES)}
        per_colour = {c: float((pc[wc == i] == i).float().mean()) for i, c in enumerate(colours)}
        bare = [f"a {s}" for s in data.SHAPES for _ in range(per_prompt)]
        bare_images = adapter.generate(bare, list(range(len(bare))), guidance_scale=w)
        bare_acc = float((adapter.evaluator.head_logits(bare_images)["shape"].argmax(1) == torch.arange(8).repeat_interleave(per_prompt)).float().mean())
        result[str(w)] = {
            "shape_accuracy": float((ps == ws).float().mean()),
            "colour_accuracy": float((pc == wc).float().mean()),
            "both_accuracy": float(((ps == ws) & (pc == wc)).float().mean()),
            "bare_shape_accuracy": bare_acc,
            "per_shape": per_shape,
            "per_colour": per_colour,
            "n": len(prompts),
            "seconds_per_image": elapsed / len(prompts),
        }
        log.info("w=%.1f %s", w, {k: v for k, v in result[str(w)].items() if not k.startswith("per")})
    return result


def write_model_card(model_dir: Path, evaluation: dict) -> None:
    model_dir = Path(model_dir)
    r = json.loads((model_dir / "training_report.json").read_text())
    twin = json.loads((model_dir / "twin.json").read_text())
    size_mb = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file()) / 1e6
    w_default = str(float(twin["guidance_scale"]))
    lines = [
        "# shapes-sd (embedded twin)",
        "",
        "A tiny Stable Diffusion made of the real pipeline classes, trained on procedurally drawn captioned shapes",
        "(`unlearning/datasets/shapes.py`: 8 shapes x 8 colours x size, fill style, background, position).",
        "Made by `python -m unlearning.embedded.shapes train` (seeded); this card by",
        "`python -m unlearning.embedded.shapes evaluate --write-card`. Loads with",
        "`StableDiffusionPipeline.from_pretrained(folder)` exactly like a hub snapshot.",
        "",
        "## Components",
        f"- `tokenizer/`: CLIPTokenizer, byte-level BPE with one token per caption word, {MAX_TOKENS}-token limit.",
        f"- `text_encoder/`: CLIPTextModel, 2 layers, width {TEXT_WIDTH}, {r['text_encoder_parameters']:,} parameters.",
        f"- `vae/`: AutoencoderKL, 32x32x3 <-> 16x16x4, {r['vae_parameters']:,} parameters; latents normalised per channel",
        "  (statistics folded into quant_conv / post_quant_conv, scaling_factor 1.0).",
        f"- `unet/`: UNet2DConditionModel, {r['unet_parameters']:,} parameters, cross-attention dim {TEXT_WIDTH}.",
        "- `scheduler/`: DDIMScheduler over cosine betas (terminal SNR ~ 0), eta 0,",
        f"  {twin['num_inference_steps']} steps, classifier-free guidance w = {twin['guidance_scale']} by default.",
        "- `evaluator/`: CNN with a shape head and a colour head (forget / retain scores); never edited by a method.",
        f"- weights stored in fp16; size on disk {size_mb:.1f} MB.",
        "",
        "## Training (measured here, 2 CPU cores)",
        f"- evaluator: held-out accuracy on plain renders shape **{r['evaluator_heldout_accuracy']['shape']:.3f}**, colour"
        f" **{r['evaluator_heldout_accuracy']['colour']:.3f}**; on VAE round trips shape"
        f" {r['evaluator_heldout_accuracy'].get('vae_shape', float('nan')):.3f}, colour {r['evaluator_heldout_accuracy'].get('vae_colour', float('nan')):.3f}"
        f" ({r['evaluator_seconds'] / 60:.1f} min; background / foreground shade jitter, half the images through the VAE).",
        f"- VAE: {r['vae']['steps']} steps, {r['vae']['seconds'] / 60:.1f} min, held-out reconstruction MSE {r['vae']['heldout_mse']:.4f}"
        f" (images in [-1, 1]), KL weight {r['vae']['kl_weight']}.",
        f"- UNet + text encoder: {r['unet']['steps']} steps, batch {r['unet']['batch_size']}, {r['unet']['seconds'] / 60:.1f} min, EMA 0.999,"
        f" final loss {r['unet']['final_loss_avg200']:.4f}.",
        f"- total {r['total_seconds'] / 60:.1f} min.",
        *(["- the evaluator in this folder was retrained afterwards with `python -m unlearning.embedded.shapes evaluator`"
           " (tinted backgrounds and VAE round trips; the first one, trained on plain renders only, misread generated images)."]
          if "evaluator_training" in r else []),
        "",
        "## Quality: the evaluator on the twin's own samples",
        "",
        "Prompts \"a {colour} {shape}\" (all 64 pairs) and \"a {shape}\".",
        "",
        "| guidance w | shape | colour | both | \"a {shape}\" shape | worst shape | s / image (CPU) | n |",
        "|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for w, e in evaluation.items():
        worst = min(e["per_shape"], key=e["per_shape"].get)
        mark = " (default)" if w == w_default else ""
        lines.append(
            f"| {w}{mark} | {e['shape_accuracy']:.3f} | {e['colour_accuracy']:.3f} | {e['both_accuracy']:.3f} | {e['bare_shape_accuracy']:.3f} |"
            f" {worst}: {e['per_shape'][worst]:.2f} | {e['seconds_per_image']:.4f} | {e['n']} |"
        )
    d = evaluation.get(w_default) or next(iter(evaluation.values()))
    lines += ["", "Per shape at the default w: " + ", ".join(f"{k}: {v:.2f}" for k, v in d["per_shape"].items()),
              "", "Per colour at the default w: " + ", ".join(f"{k}: {v:.2f}" for k, v in d["per_colour"].items()), ""]
    (model_dir / "README.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m unlearning.embedded.shapes", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train the shapes-sd twin and its evaluator")
    tr.add_argument("--out", type=Path, default=ASSETS)
    tr.add_argument("--vae-minutes", type=float, default=7.0)
    tr.add_argument("--minutes", type=float, default=44.0, help="wall-clock budget for the UNet + text encoder")
    tr.add_argument("--steps", type=int, default=5500)
    tr.add_argument("--batch-size", type=int, default=48)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--workdir", type=Path, default=None, help="write probe sample grids here while training")
    tr.add_argument("--smoke", action="store_true", help="a few steps only (tests)")
    re_ev = sub.add_parser("evaluator", help="(re)train only the evaluator of a trained twin folder, in place")
    re_ev.add_argument("--model", type=Path, default=ASSETS)
    re_ev.add_argument("--epochs", type=int, default=8)
    re_ev.add_argument("--images", type=int, default=20000)
    re_ev.add_argument("--seed", type=int, default=0)
    ev = sub.add_parser("evaluate", help="evaluator accuracy on the twin's own samples")
    ev.add_argument("--model", type=Path, default=ASSETS)
    ev.add_argument("--per-prompt", type=int, default=8)
    ev.add_argument("--write-card", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "train":
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
        if args.smoke:
            report = train_twin(args.out, vae_minutes=1, unet_minutes=1, vae_steps=4, unet_steps=4, batch_size=8, n_images=500,
                                evaluator_images=256, evaluator_epochs=1, seed=args.seed, workdir=None, smoke=True)
        else:
            report = train_twin(args.out, vae_minutes=args.vae_minutes, unet_minutes=args.minutes, vae_steps=3000, unet_steps=args.steps,
                                batch_size=args.batch_size, n_images=40000, evaluator_images=20000, evaluator_epochs=6, seed=args.seed,
                                workdir=args.workdir)
        print(json.dumps(report, indent=2))
    elif args.command == "evaluator":
        retrain_evaluator(args.model, epochs=args.epochs, n_images=args.images, seed=args.seed)
    else:
        evaluation = evaluate_twin(args.model, per_prompt=args.per_prompt)
        print(json.dumps(evaluation, indent=2))
        if args.write_card:
            write_model_card(args.model, evaluation)


if __name__ == "__main__":
    main()
