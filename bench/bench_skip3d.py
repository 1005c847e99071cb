"""skip3d on the shapes-3d twin: unlearning time with and without timestep skipping, quality, sampling speed.

    python bench/bench_skip3d.py [--skips 8,12,16] [--n-ref 4] [--set KEY=VALUE ...] [--sampling-step DEG]
                                 [--out bench/results/skip3d.json]
    python bench/bench_skip3d.py --set azimuth_step=10 --sampling-step 10 --out bench/results/skip3d_36views.json
                                 # the paper's geometry: 36 training views, 36 sampled views per input

One process, one seed: the method with skipping at the first jump length runs first, then without skipping,
then with skipping at each other jump length (N_ref references); every run's forget / remain quality against
ground-truth renders (the comparison engine's view plan: every input seen from 8 azimuths, seed 0) is printed
beside its wall-clock, and the sampling table (seconds per view at skip 0 / 8 / 12 / 16 with SSIM / PSNR /
evaluator-FID) comes from the first skipping run's unlearned model. Ratios are measured side by side here;
the paper's numbers are printed next to them for reference, not as targets. ``--set`` changes a skip3d setting
for every run (e.g. the training grid, ``azimuth_step=10``); ``--sampling-step`` samples every input at that azimuth
spacing for the sampling table instead of the comparison's 8 views. Everything goes through the shared
path: the catalog's adapter, the registered method (an Edit each), the comparison engine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unlearning.compare import ComparisonState, generate_plan, plan_comparison, sampling_table, score  # noqa: E402
from unlearning.methods import get_method  # noqa: E402
from unlearning.methods.base import RunContext, UnlearnTask  # noqa: E402
from unlearning.methods.skip3d import PAPER_SPEEDUP  # noqa: E402
from unlearning.models.catalog import load_adapter  # noqa: E402
from unlearning.models.view_sampling import azimuth_grid  # noqa: E402

SAMPLING_SKIPS = (0, 8, 12, 16)


def quality(metrics: dict) -> dict:
    """Forget views vs the override's renders and remain views vs their own (mean over remain inputs)."""
    out = {}
    for m in metrics["ground_truth"]["rows"]:
        if m["views"] == "forget" and m["against"].startswith("override"):
            out[f"forget_to_override_ssim_{m['model']}"] = m["ssim"]
            out[f"forget_to_override_psnr_{m['model']}"] = m["psnr"]
            out[f"forget_override_shape_share_{m['model']}"] = m.get("shape_rate")
        elif m["views"].startswith("remain"):
            out.setdefault(f"remain_ssim_{m['model']}", []).append(m["ssim"])
            out.setdefault(f"remain_psnr_{m['model']}", []).append(m["psnr"])
            out.setdefault(f"remain_shape_share_{m['model']}", []).append(m.get("shape_rate") or 0.0)
    return {k: (sum(v) / len(v) if isinstance(v, list) else v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="shapes-3d")
    parser.add_argument("--skips", default="8,12,16")
    parser.add_argument("--n-ref", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a skip3d setting for every run, e.g. azimuth_step=10 (the paper's 36 views)")
    parser.add_argument("--sampling-step", type=float, default=None,
                        help="sampling table: azimuth spacing of the sampled views (default: the comparison's 8 views)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "skip3d.json")
    args = parser.parse_args()
    from unlearning.cli import _parse_sets as parse_overrides  # the CLI's KEY=VALUE parsing (strings; settings coerce)
    from unlearning.threads import configure_threads

    configure_threads()  # the user's OMP_NUM_THREADS / UNLEARNING_THREADS, else one per core (docs/speed.md)
    torch.manual_seed(args.seed)
    skips = [int(s) for s in args.skips.split(",")]
    adapter = load_adapter(args.model)
    spec = get_method("skip3d")
    model_id = args.model if args.model in spec.tuned else None
    user = parse_overrides(args.set)  # every run's settings (e.g. the training grid)
    spec.settings(model_id, {"n_ref": args.n_ref, **user})  # an unknown or out-of-range --set fails here, before any sampling
    sampled = azimuth_grid(args.sampling_step) if args.sampling_step else None  # the sampling table's views
    task = UnlearnTask(forget=["blue pyramid"], retain=["red sphere", "green cylinder", "orange torus"], anchor="blue cube",
                       seed=args.seed, input_polar=75.0)
    plan = plan_comparison(adapter, task, forget_samples=8, retain_samples=8, seed=args.seed, sampling_skips=SAMPLING_SKIPS,
                           skip_refs=args.n_ref)
    original, _ = generate_plan(adapter, adapter.unet, plan)

    def unlearn(**overrides):
        settings = spec.settings(model_id, {"n_ref": args.n_ref, **user, **overrides})
        edit = spec.unlearn(adapter, task, settings, RunContext())
        edited = edit.apply_to_copy(adapter.unet)
        unlearned, _ = generate_plan(adapter, edited, plan)
        metrics = score(adapter, ComparisonState(plan, original, unlearned), task)
        return settings, edit, edited, quality(metrics)

    rows, sampling, first = [], None, None
    t0 = time.perf_counter()
    for i, k in enumerate(skips):
        settings, edit, edited, q = unlearn(skip=k)
        t = edit.timings
        if i == 0:
            first = settings
            sampling = sampling_table(adapter, edited, plan, task, azimuths=sampled)
            _, plain, _, plain_q = unlearn(skip=k, skipping=False)
            p = plain.timings
            rows.append({"variant": "no skipping", "skip": 0, "unlearn_s": p["unlearn_s"], "trajectory_s": p["trajectory_s"],
                         "unet_evals": p["unet_evals"], "speedup": 1.0, "paper_speedup": None, **plain_q})
        rows.append({"variant": f"skipping, {args.n_ref} refs", "skip": k, "unlearn_s": t["unlearn_s"],
                     "trajectory_s": t["trajectory_s"], "unet_evals": t["unet_evals"],
                     "speedup": rows[0]["unlearn_s"] / t["unlearn_s"], "paper_speedup": PAPER_SPEEDUP.get(k) if args.n_ref == 4 else None,
                     **q})
    settings = {k: getattr(first, k) for k in ("epochs", "steps", "azimuth_step", "lr_gen", "lr_fake", "mu")}
    print(f"\nskip3d on {args.model}: forget blue pyramid -> blue cube, remain {', '.join(task.retain)}; seed {args.seed}; "
          f"settings {json.dumps(settings)}\n")
    print("| variant | skip | unlearn s | trajectories s | UNet view-steps | speedup | paper | forget->override SSIM (orig -> unl.) "
          "| forget->override shape share | remain SSIM (orig -> unl.) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['skip']} | {r['unlearn_s']:.1f} | {r['trajectory_s']:.1f} | {r['unet_evals']} | {r['speedup']:.2f}x | "
              f"{r['paper_speedup'] or '-'} | {r['forget_to_override_ssim_original']:.3f} -> {r['forget_to_override_ssim_unlearned']:.3f} | "
              f"{r['forget_override_shape_share_original']:.2f} -> {r['forget_override_shape_share_unlearned']:.2f} | "
              f"{r['remain_ssim_original']:.3f} -> {r['remain_ssim_unlearned']:.3f} |")
    print("\n| sampling skip | s / view | speedup | paper | SSIM | PSNR | evaluator-FID |")
    print("|---|---|---|---|---|---|---|")
    for r in sampling:
        print(f"| {r['skip']} | {r['seconds_per_view']:.4f} | {r['speedup']:.2f}x | {r['paper_speedup'] or '-'} | {r['ssim']:.3f} | "
              f"{r['psnr']:.2f} | {r['evaluator_fid']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": args.model, "seed": args.seed, "overrides": user,
               "sampled_views": len(sampled) if sampled else len(adapter.comparison_azimuths()), "settings": {f: getattr(first, f) for f in first.__dataclass_fields__},
               "runs": rows, "sampling": sampling, "total_s": time.perf_counter() - t0, "torch": torch.__version__,
               "threads": torch.get_num_threads()}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out} ({payload['total_s']:.0f} s in all)")


if __name__ == "__main__":
    main()
