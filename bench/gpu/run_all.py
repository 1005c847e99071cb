"""Every real-model check in one go on a CUDA GPU, one table at the end (``bash bench/gpu/run_all.sh``).

Each check runs in its own process (its own peak memory) under a time limit, and the whole run stays
within ``--budget`` seconds (default 570: a 10-minute slot with start-up to spare):

    sd14 / sd15   UCE, ScaPre (closed form, in full), ESD-x, SalUn, ResAlign (``--iterations`` steps) at 512 px
    sdxl          UCE, ScaPre at 1024 px (the closed-form editors SDXL users run first), ESD-x
    zero123-xl    skip3d, 1 epoch on 2 views (256 px)
    sampling      images / s of the adapter's sampler against a plain StableDiffusionPipeline on the same
                  GPU, weights, prompts, noise and steps (SD 1.5, 512 px)

Weights: a model in the local Hugging Face cache is not needed and not used; every check builds the real
architecture from ``assets/architectures`` with random weights (the machines it runs on are offline), so the
table measures time and memory, never quality. Columns: seconds per iteration, peak CUDA memory
(``torch.cuda.max_memory_allocated``) and, beside it, the CPU rehearsal's projection for the same settings
from ``docs/rehearsal.md``'s JSON results when present (``bench/results/rehearsal/<arch>/<method>.json``).

    python bench/gpu/run_all.py [--budget 570] [--iterations 5] [--only sd15,sdxl] [--out bench/results/gpu]
    python bench/gpu/run_all.py --device cpu --tiny     (the plumbing, in a minute, on any machine)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CHECKS = [  # (arch, method, resolution); resolution None = the architecture's own
    ("sd15", "uce", None), ("sd15", "scapre", None), ("sd15", "esd", None), ("sd15", "salun", None), ("sd15", "resalign", None),
    ("sd14", "uce", None), ("sd14", "esd", None),
    ("sdxl", "uce", None), ("sdxl", "scapre", None), ("sdxl", "esd", None),
    ("zero123-xl", "skip3d", None),
]
PROJECTIONS = ROOT / "bench" / "results" / "rehearsal"


def run_check(arch: str, method: str, args, out: Path, limit: float) -> dict:
    """One rehearsal in its own process; its rehearsal.json, or why there is none."""
    from unlearning.models.architectures import load_spec

    spec = load_spec(arch, tiny=args.tiny)
    resolution = spec["resolution"]
    iterations = 1 if method == "skip3d" else args.iterations
    cmd = [sys.executable, "-m", "unlearning", "rehearse", "--arch", arch, "--method", method, "--device", args.device,
           "--dtype", args.dtype, "--iterations", str(iterations), "--resolution", str(resolution), "--out", str(out / arch),
           *(["--tiny"] if args.tiny else [])]
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, timeout=max(limit, 1), capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {"arch": arch, "method": method, "error": f"over its {limit:.0f} s share of the budget"}
    if done.returncode != 0:
        return {"arch": arch, "method": method, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    result = json.loads((out / arch / method / "rehearsal.json").read_text())
    result["wall_s"] = time.perf_counter() - started
    return result


def sampling_throughput(args) -> dict:
    """Images / s: the adapter's DDIM loop vs StableDiffusionPipeline.__call__, same folder, noise, prompts, steps."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from unlearning.models.architectures import save_folder
    from unlearning.models.catalog import load_adapter

    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    folder = save_folder("sd15", dtype=dtype, tiny=args.tiny)
    adapter = load_adapter(str(folder), args.device, dtype=dtype)
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), dtype=dtype, safety_checker=None, requires_safety_checker=False,
                                                   use_safetensors=True).to(args.device)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    prompts, seeds = ["a photo of a dog"] * args.images, list(range(args.images))
    timings = {}
    for name, call in (
        ("adapter", lambda: adapter.generate(prompts, seeds, num_inference_steps=args.steps, guidance_scale=7.5)),
        ("StableDiffusionPipeline", lambda: pipe(prompts, latents=adapter.initial_noise(seeds), num_inference_steps=args.steps,
                                                 guidance_scale=7.5, output_type="pt").images),
    ):
        call()  # warm-up (kernels, allocator)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        call()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        timings[name] = args.images / (time.perf_counter() - t0)
    return {"images_per_s": timings, "ratio": timings["adapter"] / timings["StableDiffusionPipeline"], "steps": args.steps,
            "images": args.images, "resolution": adapter.resolution}


def projection_for(arch: str, method: str) -> float | None:
    path = PROJECTIONS / arch / f"{method}.json"
    if not path.is_file():
        return None
    proj = json.loads(path.read_text())["projected_gpu_bytes"]
    return proj.get("float16") or proj.get("float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=570.0, help="seconds for everything")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--only", default="", help="comma-separated architectures (and/or 'sampling')")
    parser.add_argument("--images", type=int, default=8, help="sampling check: images per timed call")
    parser.add_argument("--steps", type=int, default=25, help="sampling check: DDIM steps")
    parser.add_argument("--tiny", action="store_true", help="tiny configs: the plumbing only")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit("run_all.py needs a CUDA GPU (none visible); --device cpu --tiny checks the plumbing.")
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    checks = [c for c in CHECKS if not only or c[0] in only]
    deadline = time.perf_counter() + args.budget
    rows = []
    for i, (arch, method, _) in enumerate(checks):
        left = deadline - time.perf_counter() - 60  # keep a minute for the sampling check
        share = left / (len(checks) - i)
        print(f"[{time.strftime('%H:%M:%S')}] {arch} {method} (up to {share:.0f} s)", file=sys.stderr, flush=True)
        rows.append(run_check(arch, method, args, args.out, share))
    sampling = None
    if not only or "sampling" in only:
        try:
            sampling = sampling_throughput(args)
        except Exception as exc:  # the table is still printed
            sampling = {"error": f"{type(exc).__name__}: {exc}"}
    gib = 1024**3
    print("\n| arch | method | px | s / iteration | unlearn s | peak CUDA GiB | CPU projection GiB | note |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['arch']} | {r['method']} | | | | | | {r['error']} |")
            continue
        spi = "-" if r.get("s_per_iteration") is None else f"{r['s_per_iteration']:.2f}"
        peak = r.get("cuda_peak_bytes")
        proj = projection_for(r["arch"], r["method"])
        print(f"| {r['arch']} | {r['method']} | {r['resolution']} | {spi} | {r['unlearn_s']:.1f} | "
              f"{'-' if peak is None else f'{peak / gib:.1f}'} | {'-' if proj is None else f'{proj / gib:.1f}'} | random weights |")
    if sampling:
        if "error" in sampling:
            print(f"\nsampling: {sampling['error']}")
        else:
            ips = sampling["images_per_s"]
            print(f"\nsampling (SD 1.5 architecture, {sampling['resolution']} px, {sampling['steps']} DDIM steps, {sampling['images']} images): "
                  f"adapter {ips['adapter']:.2f} img/s, StableDiffusionPipeline {ips['StableDiffusionPipeline']:.2f} img/s, "
                  f"ratio {sampling['ratio']:.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps({"rows": rows, "sampling": sampling}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
