"""The digits twin: a class-conditional DDPM on scikit-learn's bundled handwritten digits.

    python -m unlearning.embedded.digits train [--out assets/digits] [--minutes 20] [--smoke]
    python -m unlearning.embedded.digits evaluate [--model assets/digits]

Data: ``sklearn.datasets.load_digits`` (1,797 images, 8x8, 0..16 ink), upsampled to 16x16 and scaled
to [-1, 1], augmented with +-1 pixel shifts. A seeded 80 / 20 split: the twin and the evaluator
train on the 80 %, the evaluator's accuracy is reported on the held-out 20 %.

Model: diffusers' ``UNet2DConditionModel`` in pixel space; the label enters through cross-attention
as tokens [BOS, label] from :class:`LabelEncoder` (null label dropped in 15 % of steps for
classifier-free guidance); DDPM forward process with the cosine schedule; EMA weights are saved.
A few late EMA snapshots are saved too, as fp16 differences from the final weights (VDU estimates a
per-parameter variance from them).
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
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from safetensors.torch import save_file

from ..datasets.digits import CLASS_NAMES, IMAGE_SIZE, SPLIT_SEED, load_digit_images, split_indices
from ..models.evaluator import ImageClassifier
from ..models.label_encoder import LabelEncoder

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "digits"
def random_shift(images: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels, filling with background (0)."""
    b, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


def build_unet(size: int = IMAGE_SIZE, hidden: int = 64) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=size,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=hidden,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def build_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", clip_sample=True)


def train_evaluator(images, labels, train_idx, test_idx, *, epochs: int, seed: int) -> tuple[ImageClassifier, float]:
    """The evaluator CNN; returns it with its held-out accuracy."""
    torch.manual_seed(seed)
    model = ImageClassifier(in_channels=1, num_classes=10, widths=(32, 64, 128), feature_dim=64, class_names=CLASS_NAMES)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * math.ceil(len(train_idx) / 128))
    g = torch.Generator().manual_seed(seed)
    for _epoch in range(epochs):
        model.train()
        perm = train_idx[torch.randperm(len(train_idx), generator=g)]
        for i in range(0, len(perm), 128):
            idx = perm[i : i + 128]
            x = random_shift(images[idx], g)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(images[test_idx]).argmax(1) == labels[test_idx]).float().mean().item()
    log.info("evaluator held-out accuracy %.4f", acc)
    return model, acc


def train_twin(out: Path, *, minutes: float, max_steps: int, batch_size: int, seed: int, evaluator_epochs: int) -> dict:
    torch.manual_seed(seed)
    t_start = time.perf_counter()
    images, labels = load_digit_images()
    train_idx, test_idx = split_indices(len(images))

    # 1. the evaluator (fast; trained first so training progress can be checked with it)
    evaluator, eval_acc = train_evaluator(images, labels, train_idx, test_idx, epochs=evaluator_epochs, seed=seed)

    # 2. the diffusion twin
    unet, encoder = build_unet(), LabelEncoder(num_classes=10, hidden_size=64, class_names=CLASS_NAMES)
    scheduler = build_scheduler()
    params = [*unet.parameters(), *encoder.parameters()]
    ema = EMAModel(params, decay=0.999, use_ema_warmup=True)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    deadline = t_start + minutes * 60
    snapshot_every = max(1, max_steps // 20)
    snapshots: list[tuple[int, list[torch.Tensor]]] = []
    losses: list[float] = []
    step = 0
    while step < max_steps and time.perf_counter() < deadline:
        lr = 1e-3 * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max_steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = train_idx[torch.randint(len(train_idx), (batch_size,), generator=g)]
        x0 = random_shift(images[idx], g) * 2 - 1  # (B, 1, 16, 16) in [-1, 1]
        y = labels[idx].clone()
        y[torch.rand(batch_size, generator=g) < 0.15] = encoder.null_label  # CFG label dropout
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=g)
        x_t = scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(unet(x_t, t, encoder_hidden_states=encoder(y)).sample, noise)  # L_simple
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.step(params)
        losses.append(loss.item())
        step += 1
        if step % 200 == 0:
            log.info("step %d loss %.4f (%.0f s)", step, float(np.mean(losses[-200:])), time.perf_counter() - t_start)
        if step >= max_steps * 0.75 and step % snapshot_every == 0 and step < max_steps:  # the final one is the model
            snapshots.append((step, [p.detach().clone() for p in ema.shadow_params]))
    train_s = time.perf_counter() - t_start
    ema.copy_to(params)
    snapshots = snapshots[-4:]  # with the final weights: 5 checkpoints of one lineage

    # 3. save every component the way a hub snapshot holds it, then swap the folder in atomically
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=out.parent if out.parent.exists() else None))
    unet.save_pretrained(tmp / "unet", safe_serialization=True)
    encoder.save_pretrained(tmp / "label_encoder", safe_serialization=True)
    scheduler.save_pretrained(tmp / "scheduler")
    evaluator.save_pretrained(tmp / "evaluator", safe_serialization=True)
    (tmp / "snapshots").mkdir()
    names = [f"unet.{n}" for n, _ in unet.named_parameters()] + [f"label_encoder.{n}" for n, _ in encoder.named_parameters()]
    for snap_step, tensors in snapshots:
        diff = {n: (s - p.detach()).to(torch.float16).contiguous() for n, s, p in zip(names, tensors, params, strict=True)}
        save_file(diff, str(tmp / "snapshots" / f"step-{snap_step:06d}.safetensors"), metadata={"format": "fp16 difference from final EMA weights", "step": str(snap_step)})
    model_index = {
        "_class_name": "ClassConditionalDiffusion",
        "_unlearning_family": "class-conditional",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "label_encoder": ["unlearning", "LabelEncoder"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "evaluator": ["unlearning", "ImageClassifier"],
    }
    (tmp / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")
    twin = {
        "name": "digits",
        "dataset": "sklearn-digits",
        "num_inference_steps": 25,
        "guidance_scale": 2.0,
        "split_seed": SPLIT_SEED,
    }
    (tmp / "twin.json").write_text(json.dumps(twin, indent=2) + "\n")
    report = {
        "train_seconds": round(train_s, 1),
        "steps": step,
        "batch_size": batch_size,
        "final_loss_avg200": float(np.mean(losses[-200:])) if losses else None,
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "evaluator_heldout_accuracy": eval_acc,
        "snapshot_steps": [s for s, _ in snapshots],
        "torch": torch.__version__,
    }
    (tmp / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return report


@torch.no_grad()
def evaluate_twin(model_dir: Path, per_class: int = 50, guidance_scales=(1.0, 2.0, 3.0, 5.0)) -> dict:
    """Evaluator accuracy on the twin's own samples, per class and guidance scale."""
    from ..models.class_cond import ClassConditionalAdapter

    adapter = ClassConditionalAdapter(model_dir, torch.device("cpu"))
    result = {}
    for w in guidance_scales:
        concepts = [c for c in adapter.class_names for _ in range(per_class)]
        seeds = list(range(len(concepts)))
        t0 = time.perf_counter()
        images = adapter.generate(concepts, seeds, guidance_scale=w)
        elapsed = time.perf_counter() - t0
        pred = adapter.evaluator(images).argmax(1)
        target = torch.tensor([adapter.class_names.index(c) for c in concepts])
        per = {c: float((pred[target == i] == i).float().mean()) for i, c in enumerate(adapter.class_names)}
        result[str(w)] = {
            "accuracy": float((pred == target).float().mean()),
            "per_class": per,
            "n": len(concepts),
            "seconds_per_image": elapsed / len(concepts),
        }
        log.info("w=%.1f accuracy %.3f", w, result[str(w)]["accuracy"])
    return result


def write_model_card(model_dir: Path, evaluation: dict) -> None:
    """assets/digits/README.md: how the twin was made and what it scores (numbers from this run)."""
    model_dir = Path(model_dir)
    report = json.loads((model_dir / "training_report.json").read_text())
    twin = json.loads((model_dir / "twin.json").read_text())
    size_mb = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file()) / 1e6
    w_default = str(float(twin["guidance_scale"]))
    lines = [
        "# digits (embedded twin)",
        "",
        "A class-conditional DDPM on scikit-learn's bundled handwritten digits (`load_digits`: 1,797 images, 8x8),",
        "upsampled to 16x16. Made by `python -m unlearning.embedded.digits train` (seeded); this card by",
        "`python -m unlearning.embedded.digits evaluate --write-card`.",
        "",
        "## Model",
        f"- `unet/`: diffusers `UNet2DConditionModel`, {report['unet_parameters']:,} parameters, pixel space, 1 channel;",
        "  the label enters only through cross-attention (`label_encoder/`: tokens [BOS, label], 64-d; index 10 = null label).",
        "- `scheduler/`: `DDPMScheduler`, 1000 steps, cosine (`squaredcos_cap_v2`) betas; sampled with DDIM",
        f"  ({twin['num_inference_steps']} steps, eta 0) and classifier-free guidance w = {twin['guidance_scale']}.",
        "- `evaluator/`: the CNN that scores forget / retain rates (`ImageClassifier`); never edited by any method.",
        "- `snapshots/`: late EMA snapshots as fp16 differences from the final weights (for VDU's parameter variance).",
        f"- size on disk: {size_mb:.1f} MB (safetensors only).",
        "",
        "## Training (measured here, 2 CPU cores)",
        f"- evaluator: 40 epochs on the 80 % split; held-out accuracy on the 20 % split: **{report['evaluator_heldout_accuracy']:.3f}**.",
        f"- diffusion model: {report['steps']} AdamW steps, batch {report['batch_size']}, lr 1e-3 (warm-up, cosine), EMA 0.999,",
        f"  label dropout 15 %, +-1 px shift augmentation; {report['train_seconds'] / 60:.1f} min wall-clock (evaluator included);",
        f"  final training loss (mean of the last 200 steps) {report['final_loss_avg200']:.4f}.",
        "",
        "## Quality: the evaluator's accuracy on the twin's own samples",
        "",
        "| guidance w | accuracy | worst class | s / image (CPU) | n |",
        "|---:|---:|---|---:|---:|",
    ]
    for w, r in evaluation.items():
        worst = min(r["per_class"], key=r["per_class"].get)
        mark = " (default)" if w == w_default else ""
        lines.append(f"| {w}{mark} | {r['accuracy']:.3f} | {worst}: {r['per_class'][worst]:.2f} | {r['seconds_per_image']:.4f} | {r['n']} |")
    default = evaluation.get(w_default) or next(iter(evaluation.values()))
    lines += ["", "Per class at the default w: " + ", ".join(f"{c}: {a:.2f}" for c, a in default["per_class"].items()), ""]
    (model_dir / "README.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m unlearning.embedded.digits", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train the digits twin and its evaluator")
    tr.add_argument("--out", type=Path, default=ASSETS)
    tr.add_argument("--minutes", type=float, default=25.0, help="wall-clock budget for the diffusion model")
    tr.add_argument("--steps", type=int, default=6000)
    tr.add_argument("--batch-size", type=int, default=128)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--smoke", action="store_true", help="a few steps only (tests)")
    ev = sub.add_parser("evaluate", help="evaluator accuracy on the twin's own samples")
    ev.add_argument("--model", type=Path, default=ASSETS)
    ev.add_argument("--per-class", type=int, default=50)
    ev.add_argument("--write-card", action="store_true", help="write the model card README.md into the folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "train":
        if args.smoke:
            report = train_twin(args.out, minutes=1, max_steps=8, batch_size=16, seed=args.seed, evaluator_epochs=1)
        else:
            report = train_twin(args.out, minutes=args.minutes, max_steps=args.steps, batch_size=args.batch_size, seed=args.seed, evaluator_epochs=40)
        print(json.dumps(report, indent=2))
    else:
        evaluation = evaluate_twin(args.model, per_class=args.per_class)
        print(json.dumps(evaluation, indent=2))
        if args.write_card:
            write_model_card(args.model, evaluation)


if __name__ == "__main__":
    main()
