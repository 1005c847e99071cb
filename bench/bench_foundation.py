"""Foundation benchmark: app start, unlearning time per method, sampling speed, comparison time.

    python bench/bench_foundation.py [--model digits] [--repeats 1] [--json out.json]

Every ratio is measured side by side in this one run, against a baseline measured here too:
    app ready            vs an empty Gradio Blocks app started the same way
    unlearning, per method   vs the fine-tuning baseline (same model, twin-tuned settings)
    sampling images/s    unlearned vs original model (the edit should cost no sampling speed)
    16 + 16 samples with metrics   vs the same 32 samples without metrics
Prints a markdown table (paste into the README). Targets from the foundation issue are shown beside
the numbers; they are targets, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EMPTY_APP = "import gradio as gr\nwith gr.Blocks() as d:\n    gr.Markdown('x')\nd.launch(server_port={port})\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready_time(cmd: list[str], port: int, timeout: float = 120.0) -> float:
    """Seconds from process start until the page answers HTTP 200."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t0 < timeout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{cmd} not ready after {timeout} s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="digits")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from unlearning.compare import ComparisonState, iter_comparison, plan_comparison
    from unlearning.methods import METHODS
    from unlearning.methods.base import RunContext
    from unlearning.runner import RunRequest, prepare

    rows: list[tuple[str, float, str, float, str]] = []  # (measure, value, baseline, baseline value, target)

    # 1. app ready: our app vs an empty Gradio app, each a fresh process
    port = free_port()
    empty = ready_time([sys.executable, "-c", EMPTY_APP.format(port=port)], port)
    port = free_port()
    ours = ready_time([sys.executable, "app.py", "--port", str(port)], port)
    rows.append(("app ready (s)", ours, "empty Gradio app", empty, "< 10 s"))

    # 2. unlearning time per method (twin-tuned settings), fine-tuning as the baseline
    times = {}
    for name in METHODS:
        run = prepare(RunRequest(model=args.model, method=name, forget=["3"], device="cpu"))
        t0 = time.perf_counter()
        run.spec.unlearn(run.adapter, run.task, run.settings, RunContext())
        times[name] = time.perf_counter() - t0
    for name, seconds in times.items():
        spec = METHODS[name]
        iters = spec.defaults(args.model).get("iterations")
        rows.append((f"unlearn: {name} ({iters} it.) (s)", seconds, "fine-tuning", times["finetune"], "< 60 s" if name == "esd" else ""))

    # 3. sampling speed and a 16 + 16 comparison with metrics
    run = prepare(RunRequest(model=args.model, method="esd", forget=["3"], device="cpu", settings={"iterations": 5}))
    edit = run.spec.unlearn(run.adapter, run.task, run.settings, RunContext())
    edited = edit.apply_to_copy(run.adapter.unet)
    adapter, task = run.adapter, run.task
    concepts, seeds = ["3"] * 16, list(range(16))
    adapter.generate(concepts[:2], seeds[:2])  # warm-up
    speed = {}
    for label, unet in (("original", adapter.unet), ("unlearned", edited)):
        t0 = time.perf_counter()
        adapter.generate(concepts, seeds, unet=unet)
        speed[label] = 16 / (time.perf_counter() - t0)
    rows.append(("sampling, unlearned (images/s)", speed["unlearned"], "original model", speed["original"], ""))

    plan = plan_comparison(adapter, task, forget_samples=7, retain_samples=1, seed=0)  # 7 + 9 = 16 pairs
    t0 = time.perf_counter()
    for _state in iter_comparison(adapter, edited, plan, task):
        pass
    with_metrics = time.perf_counter() - t0
    t0 = time.perf_counter()
    bare = ComparisonState(plan)
    for unet in (adapter.unet, edited):
        adapter.generate([c for _, c, _ in plan.items], [s for _, _, s in plan.items], unet=unet)
    without = time.perf_counter() - t0
    rows.append((f"{len(plan.items)} + {len(bare.plan.items)} samples with metrics (s)", with_metrics,
                 "same samples, no metrics", without, "< 10 s"))

    print(f"\nbench_foundation on {args.model}: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, device cpu\n")
    print("| measure | value | baseline | baseline value | ratio | target |")
    print("|---|---:|---|---:|---:|---|")
    for measure, value, base, base_value, target in rows:
        print(f"| {measure} | {value:.2f} | {base} | {base_value:.2f} | {value / base_value:.2f}x | {target} |")
    if args.json:
        args.json.write_text(json.dumps([dict(zip(("measure", "value", "baseline", "baseline_value", "target"), r, strict=True))
                                         for r in rows], indent=2))


if __name__ == "__main__":
    main()
