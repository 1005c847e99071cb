"""Closed-form editors at full Stable Diffusion 1.5 size on this CPU: edit seconds and seconds per concept.

    python bench/bench_fullsize_closed_form.py [--counts 1,10,100] [--methods uce,scapre,speed,rece,mace] [--model FOLDER]

Without ``--model`` the model is SD 1.5's architecture built from its published configuration values (UNet
860 M parameters, CLIP ViT-L/14 text encoder 123 M, VAE) with *random* weights, nothing downloaded: the
shapes and sizes of every matrix the editors touch are the real ones, so the timings are, while nothing the
model would draw means anything. A word-level tokenizer built here stands in for CLIP's BPE vocabulary
(each concept word is one token, as most are in CLIP's). ``--model`` takes a diffusers folder instead (a real
checkpoint, or a rehearsal folder with the same layout), or a catalog name: ``--model shapes-sd`` times the twin on
its 64 colour-shape pairs (the scaling bench's order, seed 0) for issue 18's twin target (64 concepts in under 1 s).

Timed per method and count: the whole ``unlearn`` call (text encoding included) after one warm-up edit, its
text-encoding part, and seconds per concept; the warm-up edit's own seconds (one concept, first call in the
process: caches filled, kernels loaded) are printed too. RECE runs without its validation sampling (no evaluator here, so it
makes no images); MACE runs its closed-form stages only (``lora = False``: the per-concept LoRAs train on images,
which is GPU work). Targets from issue 18: 100 concepts in under 5 s on this 2-core CPU (SPEED reports 5 s on
an A100); run under ``/work/bin/cpu --both``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_sd_real import CONCEPTS as BASE_CONCEPTS  # noqa: E402 (this folder is on the path when run as a script)

# Published configuration values of runwayml/stable-diffusion-v1-5 (unet/, text_encoder/ = CLIP ViT-L/14, vae/,
# scheduler/); only the values that differ from the classes' defaults matter, all are written out.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, act_fn="silu", norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), sample_size=512,
)
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                      skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)

# 100 concepts: bench_sd_real.py's 50 artists and objects, then 50 more of each kind
MORE_CONCEPTS = [
    "frida kahlo", "georgia okeeffe", "gustav klimt", "henri matisse", "jackson pollock", "johannes vermeer", "paul cezanne",
    "rene magritte", "roy lichtenstein", "wassily kandinsky", "caravaggio", "michelangelo", "leonardo da vinci", "raphael",
    "titian", "el greco", "goya", "turner", "constable", "degas", "renoir", "manet", "seurat", "gauguin",
    "toulouse lautrec", "mucha", "klee", "miro", "chagall", "modigliani", "basquiat", "banksy", "keith haring",
    "lighthouse", "windmill", "castle", "bridge", "waterfall", "volcano", "tornado", "submarine", "helicopter",
    "motorcycle", "tractor", "violin", "piano", "guitar", "trumpet", "drum", "anchor",
]
CONCEPTS = [c.lower() for c in BASE_CONCEPTS] + MORE_CONCEPTS


def build_sd15(device: torch.device) -> tuple[object, float]:
    """A StableDiffusionAdapter around SD 1.5's architecture with random weights, and the seconds it took."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from unlearning.embedded.shapes import build_tokenizer
    from unlearning.models.sd import GENERIC_RETAIN, StableDiffusionAdapter

    t0 = time.perf_counter()
    torch.manual_seed(0)
    words = sorted({w for text in CONCEPTS + GENERIC_RETAIN for w in text.split()})
    tokenizer = build_tokenizer(words)
    tokenizer.model_max_length = SD15_TEXT["max_position_embeddings"]
    text_config = CLIPTextConfig(**SD15_TEXT, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD15_VAE), text_encoder=CLIPTextModel(text_config), tokenizer=tokenizer,
        unet=UNet2DConditionModel(**SD15_UNET), scheduler=PNDMScheduler(**SD15_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    adapter = StableDiffusionAdapter("sd15-architecture-random-weights", device, torch.float32, pipe=pipe)
    return adapter, time.perf_counter() - t0


class TimedEncoding:
    """Wraps this bench's adapter instance's batched text encoding to add up its seconds."""

    def __init__(self, adapter):
        self.inner, self.seconds = adapter.token_embeddings_many, 0.0
        adapter.token_embeddings_many = self

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


OVERRIDES = {"rece": {"select_epoch": False}, "mace": {"lora": False}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="a diffusers folder (default: SD 1.5's architecture, random weights)")
    parser.add_argument("--counts", default="1,10,100")
    parser.add_argument("--methods", default="uce,scapre,speed,rece,mace")
    parser.add_argument("--out", default="bench/results/fullsize_closed_form.json")
    args = parser.parse_args()

    from unlearning.methods import get_method
    from unlearning.methods.base import RunContext, UnlearnTask

    device = torch.device("cpu")
    if args.model:
        from unlearning.models.catalog import load_adapter

        t0 = time.perf_counter()
        adapter = load_adapter(args.model, device)
        built_s = time.perf_counter() - t0
    else:
        adapter, built_s = build_sd15(device)
    unet_params = sum(p.numel() for p in adapter.unet.parameters())
    print(f"model ready in {built_s:.1f} s: UNet {unet_params / 1e6:.0f} M parameters, text width "
          f"{adapter.text_encoder.config.hidden_size}, torch threads {torch.get_num_threads()}", flush=True)
    timer = TimedEncoding(adapter)
    counts = [int(c) for c in args.counts.split(",")]
    concepts, retain_for = CONCEPTS, lambda k: adapter.default_retain(CONCEPTS[:1])
    if getattr(adapter, "vocabulary", None):  # a twin: its colour-shape pairs and preserved pairs, as the scaling bench
        from unlearning.benchmarks.scaling import ScalingConfig, concept_order, retained_pairs

        concepts = concept_order(adapter, 0)
        retain_for = lambda k: retained_pairs(concepts, k, ScalingConfig())  # noqa: E731
    if max(counts) > len(concepts):
        parser.error(f"this model has {len(concepts)} concepts to erase here; --counts goes up to {max(counts)}")
    rows = []
    for method in args.methods.split(","):
        spec = get_method(method)
        # the twin's tuned values where timing a catalog model, else the paper defaults
        settings = spec.settings(args.model if args.model and not Path(args.model).exists() else None, OVERRIDES.get(method, {}))
        t0 = time.perf_counter()
        spec.unlearn(adapter, UnlearnTask(forget=concepts[:1], retain=retain_for(1)), settings, RunContext())  # warm-up
        print(f"{method:>7} warm-up (1 concept, first call): {time.perf_counter() - t0:.2f} s", flush=True)
        for k in counts:
            task = UnlearnTask(forget=concepts[:k], retain=retain_for(k))
            timer.seconds = 0.0
            t0 = time.perf_counter()
            edit = spec.unlearn(adapter, task, settings, RunContext())
            seconds = time.perf_counter() - t0
            row = {"method": method, "concepts": k, "seconds": seconds, "seconds_per_concept": seconds / k,
                   "text_encoding_s": timer.seconds, "changed_tensors": len(edit.params),
                   "changed_values": edit.num_changed, "erase_gap": edit.loss_log[-1].get("erase_gap")}
            rows.append(row)
            print(f"{method:>7} k={k:>3}: {seconds:6.2f} s ({seconds / k:.4f} s/concept; text encoding {timer.seconds:.2f} s), "
                  f"{len(edit.params)} tensors", flush=True)
    print("\n| method | concepts | edit s | s / concept | of which text encoding s | tensors changed |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['concepts']} | {r['seconds']:.2f} | {r['seconds_per_concept']:.4f} | "
              f"{r['text_encoding_s']:.2f} | {r['changed_tensors']} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": args.model or "SD 1.5 architecture, random weights (published config values)",
               "unet_parameters": unet_params, "torch": torch.__version__, "threads": torch.get_num_threads(),
               "cpu": platform.processor() or platform.machine(), "rows": rows}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(out)
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
