"""Soak test of a hosted launch: 8 gradio_client users x 5 mixed requests against ``python app.py --profile ...``.

    python bench/soak_hosted.py [--users 8] [--requests 5] [--profile spaces_config.yaml]

The app runs in its own process on the hosted profile (runs and Gradio's temp files in a fresh folder), so its
resident memory can be read. Each user, with its own gradio_client session, makes a fixed mix of requests:

    run      /unlearn on the digits twin with tiny settings (its seed and iterations are the user's own)
    cancel   /unlearn with many iterations, cancelled after a moment
    upload   /zero123 with an uploaded file that is not an image, or too many pixels: refused before any work
    export   /runs_list then /runs_export of the user's own last run

Checked: every run returns *its own* run card (seed, iterations, owner's list); every list shows only the user's
own runs; every refused upload says why; no partial run folder ('.'-prefixed temp) is left in the runs folder;
the server's resident memory after the soak is within 20 % of after its first request. Prints a table and the
numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from apphelpers import OUT_DOWNLOAD, OUT_STATUS, free_port, unlearn_args  # noqa: E402

TINY = {"forget_samples": 1, "retain_samples": 1, "steps": 1}
MIX = ("run", "upload", "run", "cancel", "export")  # each user's five requests, rotated per user


def launch(profile: Path, port: int, workdir: Path) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_TEMP_DIR": str(workdir / "gradio-tmp"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--profile", str(profile), "--port", str(port),
                             "--server-name", "127.0.0.1"], cwd=ROOT, env=env, stdout=(workdir / "app.log").open("w"),
                            stderr=subprocess.STDOUT)
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(1)
    proc.kill()
    raise SystemExit(f"the app did not start; see {workdir / 'app.log'}")


def rss(proc: subprocess.Popen) -> int:
    return psutil.Process(proc.pid).memory_info().rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--profile", default=str(ROOT / "spaces_config.yaml"), help="the hosted profile to launch with")
    args = parser.parse_args()

    import gradio_client
    import yaml

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    profile = yaml.safe_load(Path(args.profile).read_text()) or {}
    profile.setdefault("runs", {})["dir"] = str(work / "runs")
    profile.setdefault("queue", {})["max_size"] = 4 * args.users  # every request is accepted: none may be lost
    profile["runs"]["keep"] = 1000
    (work / "profile.yaml").write_text(yaml.safe_dump(profile))
    not_image = work / "notes.png"
    not_image.write_text("this is text, not a picture")
    from PIL import Image

    huge = work / "huge.png"
    Image.new("RGB", (1100, 1100), "white").save(huge)  # over the profile's pixel limit (512 x 512)

    port = free_port()
    proc = launch(work / "profile.yaml", port, work)
    url = f"http://127.0.0.1:{port}/"
    results: list[dict] = []
    lock = threading.Lock()
    try:
        warm = gradio_client.Client(url, verbose=False)
        warm.submit(*unlearn_args(seed=999, settings={"iterations": 1, "ddim_steps": 2}, **TINY), api_name="/unlearn").result(timeout=300)
        rss_first = rss(proc)
        t0 = time.perf_counter()

        def user(u: int) -> None:
            client = gradio_client.Client(url, verbose=False)
            mine: list[str] = []  # zips of my finished runs
            for k in range(args.requests):
                kind = MIX[(u + k) % len(MIX)]
                seed, iterations = 100 * u + k, 1 + (u + k) % 3
                row = {"user": u, "kind": kind}
                start = time.perf_counter()
                try:
                    if kind == "run":
                        out = client.submit(*unlearn_args(seed=seed, settings={"iterations": iterations, "ddim_steps": 2}, **TINY),
                                            api_name="/unlearn").result(timeout=600)
                        with zipfile.ZipFile(out[OUT_DOWNLOAD]) as zf:
                            card = json.loads(zf.read("run.json"))
                        row["ok"] = (card["request"]["seed"] == seed and card["settings"]["iterations"] == iterations
                                     and "Done" in out[OUT_STATUS])
                        mine.append(out[OUT_DOWNLOAD])
                    elif kind == "cancel":
                        job = client.submit(*unlearn_args(seed=seed, settings={"iterations": 300, "ddim_steps": 4}, **TINY),
                                            api_name="/unlearn")
                        time.sleep(2.0)
                        job.cancel()
                        row["ok"] = True
                    elif kind == "upload":
                        bad = not_image if u % 2 else huge
                        out = client.predict("shapes-3d", "blue pyramid", gradio_client.handle_file(str(bad)), "blue cube", None,
                                             ["red sphere"], "override", 75, 0, True, 4, 12, False, 1, False, api_name="/zero123")
                        row["ok"] = str(out[0]).startswith("**Could not run:**")
                        row["message"] = str(out[0])[:120]
                    else:  # export: my own runs only
                        table = client.predict(api_name="/runs_list")
                        names = [r[0] for r in table[0]["data"]] if isinstance(table[0], dict) else []
                        own = {Path(z).stem for z in mine}
                        row["ok"] = set(names) <= own | set() and (not mine or bool(names))
                        row["listed"] = len(names)
                        if names:
                            exported = client.predict(names[0], api_name="/runs_export")
                            row["ok"] = row["ok"] and exported[0] is not None
                except Exception as exc:  # noqa: BLE001 (every outcome is reported)
                    row["ok"], row["error"] = False, f"{type(exc).__name__}: {exc}"[:200]
                row["s"] = round(time.perf_counter() - start, 2)
                with lock:
                    results.append(row)

        threads = [threading.Thread(target=user, args=(u,)) for u in range(args.users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        time.sleep(2)
        rss_after = rss(proc)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    partial = [p.name for p in (work / "runs").iterdir() if p.name.startswith(".")] if (work / "runs").is_dir() else []
    runs = [p for p in (work / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")] if (work / "runs").is_dir() else []
    by_kind: dict[str, list[dict]] = {}
    for r in results:
        by_kind.setdefault(r["kind"], []).append(r)
    print("| request | n | ok | median s |\n|---|---:|---:|---:|")
    for kind, rows in sorted(by_kind.items()):
        times = sorted(r["s"] for r in rows)
        print(f"| {kind} | {len(rows)} | {sum(r['ok'] for r in rows)} | {times[len(times) // 2]:.1f} |")
    numbers = {"users": args.users, "requests_each": args.requests, "answered": len(results),
               "expected": args.users * args.requests, "ok": sum(r["ok"] for r in results), "wall_s": round(wall, 1),
               "rss_after_first_mb": round(rss_first / 2**20, 1), "rss_after_soak_mb": round(rss_after / 2**20, 1),
               "rss_growth": round(rss_after / rss_first - 1, 3), "partial_run_folders_left": partial,
               "run_folders": len(runs), "failures": [r for r in results if not r["ok"]]}
    print(json.dumps(numbers, indent=2))
    good = (numbers["answered"] == numbers["expected"] and numbers["ok"] == numbers["expected"] and not partial
            and numbers["rss_growth"] <= 0.20)
    print("SOAK PASSED" if good else "SOAK FAILED")
    sys.exit(0 if good else 1)


if __name__ == "__main__":
    main()
