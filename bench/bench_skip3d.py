"""skip3d on the shapes-3d twin: unlearning time with and without timestep skipping, quality, sampling speed.

    python bench/bench_skip3d.py [--skips 8,12,16] [--n-ref 4] [--out bench/results/skip3d.json]

One process, one seed: the method without skipping runs once, then with skipping at each jump length
(N_ref references); every run's forget / remain quality against ground-truth renders is printed beside its
wall-clock, and the sampling table (seconds per view at skip 0 / 8 / 12 / 16 with SSIM / PSNR /
evaluator-FID) comes from the first skipping run's unlearned model. Ratios are measured side by side here;
the paper's numbers are printed next to them for reference, not as targets.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unlearning import novel_view as nv  # noqa: E402


def quality(result: dict) -> dict:
    """Forget views vs the override's renders and remain views vs their own (mean over remain inputs)."""
    out = {}
    for m in result["metrics"]:
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
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "skip3d.json")
    args = parser.parse_args()
    from unlearning.threads import configure_threads

    configure_threads()  # the user's OMP_NUM_THREADS / UNLEARNING_THREADS, else one per core (docs/speed.md)
    torch.manual_seed(args.seed)
    skips = [int(s) for s in args.skips.split(",")]
    common = {"forget": "blue pyramid", "override": "blue cube", "remain": ["red sphere", "green cylinder", "orange torus"]}
    rows, sampling, first = [], None, None
    t0 = time.perf_counter()
    for i, k in enumerate(skips):
        result = nv.run(args.model, **common, settings={"skip": k, "n_ref": args.n_ref}, seed=args.seed, compare_plain=(i == 0),
                        sampling_skips=nv.SAMPLING_SKIPS if i == 0 else ())
        t = result["timings"]
        if i == 0:
            first = result
            sampling = result["sampling"]
            plain = {"variant": "no skipping", "skip": 0, "unlearn_s": t["unlearn_s_plain"], "trajectory_s": t["trajectory_s_plain"],
                     "unet_evals": t["unet_evals_plain"], "speedup": 1.0, "paper_speedup": None}
            rows.append(plain)
            # quality of the plain run: its unlearned UNet through the same comparison
            plain_q = nv.compare_views(result, result["plain_unet"])
            rows[0].update(quality(plain_q))
        rows.append({"variant": f"skipping, {args.n_ref} refs", "skip": k, "unlearn_s": t["unlearn_s_skipping"],
                     "trajectory_s": t["trajectory_s_skipping"], "unet_evals": t["unet_evals_skipping"],
                     "speedup": rows[0]["unlearn_s"] / t["unlearn_s_skipping"], "paper_speedup": nv.PAPER_SPEEDUPS["unlearning"].get(k),
                     **quality(result)})
    print(f"\nskip3d on {args.model}: forget blue pyramid -> blue cube, remain {', '.join(common['remain'])}; seed {args.seed}; "
          f"settings {json.dumps({k: first['settings'][k] for k in ('epochs', 'steps', 'azimuth_step', 'lr_gen', 'lr_fake', 'mu')})}\n")
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
    payload = {"model": args.model, "seed": args.seed, "settings": first["settings"], "runs": rows, "sampling": sampling,
               "total_s": time.perf_counter() - t0, "torch": torch.__version__, "threads": torch.get_num_threads()}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out} ({payload['total_s']:.0f} s in all)")


if __name__ == "__main__":
    main()
