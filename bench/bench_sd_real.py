"""Closed-form editors on a real Stable Diffusion (GPU): seconds per concept and peak memory.

    python bench/bench_sd_real.py [--model CompVis/stable-diffusion-v1-4] [--counts 1,10,50] [--samples 4]

Loads the checkpoint through the same adapter the app uses (fp16 on CUDA), runs UCE and ScaPre for k
concepts (celebrity-free generic objects and styles), and prints a table: edit seconds, seconds per
concept, peak CUDA memory of the edit, and a sanity sample (the first concept's prompt before / after,
saved as PNGs under --out). Needs the weights in the local Hugging Face cache or a reachable hub.
Target from the issue: < 1 s per concept on an H100-class GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONCEPTS = [
    "Van Gogh", "Picasso", "Monet", "Rembrandt", "Salvador Dali", "Andy Warhol", "Claude Lorrain", "Kandinsky", "Hokusai",
    "Edvard Munch", "golf ball", "chainsaw", "church", "parachute", "french horn", "garbage truck", "gas pump",
    "cassette player", "english springer", "tench", "airplane", "bicycle", "teddy bear", "umbrella", "giraffe",
    "elephant", "zebra", "pizza", "donut", "broccoli", "clock", "vase", "scissors", "toaster", "hair drier",
    "snowboard", "kite", "skateboard", "surfboard", "tennis racket", "wine glass", "banana", "sandwich", "hot dog",
    "laptop", "keyboard", "microwave", "refrigerator", "book", "toothbrush",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="CompVis/stable-diffusion-v1-4")
    parser.add_argument("--counts", default="1,10,50")
    parser.add_argument("--methods", default="uce,scapre")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--out", default="bench/results/sd_real")
    args = parser.parse_args()
    from unlearning.threads import configure_threads

    configure_threads()  # the user's OMP_NUM_THREADS / UNLEARNING_THREADS, else one per core (docs/speed.md)

    from unlearning.images import to_pil
    from unlearning.methods import get_method
    from unlearning.methods.base import RunContext, UnlearnTask
    from unlearning.models.catalog import load_adapter

    cuda = torch.cuda.is_available()
    t0 = time.perf_counter()
    adapter = load_adapter(args.model, "auto")
    print(f"loaded {args.model} on {adapter.device} ({adapter.dtype}) in {time.perf_counter() - t0:.1f} s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in args.methods.split(","):
        spec = get_method(method)
        settings = spec.settings(args.model)
        for k in (int(c) for c in args.counts.split(",")):
            task = UnlearnTask(forget=CONCEPTS[:k], retain=adapter.default_retain(CONCEPTS[:k]))
            spec.unlearn(adapter, UnlearnTask(forget=CONCEPTS[:1], retain=task.retain), settings, RunContext())  # warm-up
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            base_mem = torch.cuda.memory_allocated() if cuda else 0
            t = time.perf_counter()
            edit = spec.unlearn(adapter, task, settings, RunContext())
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t
            peak = (torch.cuda.max_memory_allocated() - base_mem) / 2**20 if cuda else float("nan")
            rows.append((method, k, seconds, seconds / k, peak, len(edit.params)))
            print(f"{method} k={k}: {seconds:.2f} s ({seconds / k:.3f} s/concept), peak +{peak:.0f} MiB", flush=True)
            if k == 1 and args.samples:
                prompt = [adapter.prompt_for(CONCEPTS[0])] * args.samples
                seeds = list(range(args.samples))
                for name, unet in (("original", adapter.unet), (method, edit.apply_to_copy(adapter.unet))):
                    for i, im in enumerate(adapter.generate(prompt, seeds, unet=unet, num_inference_steps=30)):
                        to_pil(im).save(out / f"{name}_{i}.png")
    print("\n| method | concepts | edit s | s / concept | peak extra CUDA MiB | tensors changed |")
    print("|---|---:|---:|---:|---:|---:|")
    for m, k, s, spc, peak, n in rows:
        print(f"| {m} | {k} | {s:.2f} | {spc:.3f} | {peak:.0f} | {n} |")


if __name__ == "__main__":
    main()
