"""skip3d on a real Zero123 (GPU): unlearning wall-clock with / without skipping, peak memory, sampling speed.

    python bench/bench_skip3d_real.py [--model kxic/zero123-xl] [--epochs 1] [--out bench/results/skip3d_real.json]

Needs a CUDA GPU and the model in the local Hugging Face cache (or a folder of its layout). The inputs are
the renderer's objects at 256 px (forget blue pyramid -> override blue cube, remain red sphere / green
cylinder), so ground-truth views exist; the paper's settings (lr 4e-6 / 6e-6, mu 0.01, 32 DDIM steps,
4 references, skip 12) unless --set overrides them. fp16 weights, fp32 trained copies. Prepared on a CPU-only
machine and not run there: the numbers come from whoever runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unlearning.runner import RunRequest, execute, prepare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="kxic/zero123-xl")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "skip3d_real.json")
    args = parser.parse_args()
    from unlearning.threads import configure_threads

    configure_threads()  # the user's OMP_NUM_THREADS / UNLEARNING_THREADS, else one per core (docs/speed.md)
    if not torch.cuda.is_available():
        sys.exit("bench_skip3d_real needs a CUDA GPU (none here).")
    settings = {"epochs": args.epochs, "measure_speedup": True, **dict(s.split("=", 1) for s in args.set)}
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run = prepare(RunRequest(model=args.model, method="skip3d", forget=["blue pyramid"], anchor="blue cube",
                             preserve=["red sphere", "green cylinder"], settings=settings, forget_samples=8, retain_samples=8,
                             sampling_skips=[0, 8, 12, 16]))
    events = list(execute(run))
    metrics = events[-1].state.metrics
    payload = {"model": args.model, "gpu": torch.cuda.get_device_name(), "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
               "timings": metrics["timings"], "sampling": metrics.get("sampling"), "metrics": metrics["ground_truth"],
               "settings": events[-1].edit.settings, "total_s": time.perf_counter() - t0}
    print(json.dumps({k: payload[k] for k in ("gpu", "peak_memory_gb", "timings", "total_s")}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
