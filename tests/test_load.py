"""Robustness under load: eight gradio_client users at once against a locally launched app (digits twin,
tiny settings), with the hosted profile's queue (concurrency 1, a short line).

Every request either completes with *its own* results (checked through the seeds and settings in the
run card of the zip it received) or is turned away with Gradio's "Queue is full" message; none is lost
or mixed up. Users who share a seed see identical "original" images whatever the others unlearned, and
the cached base model is bit-identical afterwards. Cancelling a running job stops the method's worker.
The measured numbers go to test-artifacts/load_test.json (and stdout with -s).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import zipfile
from pathlib import Path

import pytest
from apphelpers import OUT_DOWNLOAD, OUT_STATUS, launched_app, unlearn_args

from unlearning.models.catalog import load_adapter

gradio_client = pytest.importorskip("gradio_client")

CLIENTS = 8
QUEUE = {"max_size": 4, "default_concurrency_limit": 1}  # 1 running + 4 waiting: with 8 at once, some are turned away
TINY = {"forget_samples": 1, "retain_samples": 1, "steps": 1}
TIMEOUT_S = 240


def model_hash(module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def read_zip(path: str) -> tuple[dict, dict[str, bytes]]:
    """(run card, original images by file name) from a run's zip."""
    with zipfile.ZipFile(path) as zf:
        card = json.loads(zf.read("run.json"))
        originals = {Path(n).name: zf.read(n) for n in zf.namelist() if n.startswith("images/original/") and n.endswith(".png")}
    return card, originals


@pytest.fixture(scope="module")
def load_results(artifacts_dir):
    base = load_adapter("digits", "auto")  # the device the requests ask for: the cached instance the app uses
    before = model_hash(base.unet)
    # seeds repeat (0..3 twice) with different iterations, so pairs of users share originals but not edits
    plans = [{"seed": i % 4, "iterations": 1 + i // 4} for i in range(CLIENTS)]
    outcomes: list[dict] = [{} for _ in plans]
    with launched_app(**QUEUE) as url:
        gradio_client.Client(url, verbose=False)  # warm the endpoint list before the burst
        barrier = threading.Barrier(CLIENTS)

        def user(i: int) -> None:
            plan = plans[i]
            client = gradio_client.Client(url, verbose=False)
            args = unlearn_args(seed=plan["seed"], settings={"iterations": plan["iterations"], "ddim_steps": 2}, **TINY)
            barrier.wait()
            start = time.perf_counter()
            try:
                out = client.submit(*args, api_name="/unlearn").result(timeout=TIMEOUT_S)
                outcomes[i] = {"status": out[OUT_STATUS], "zip": out[OUT_DOWNLOAD]}
            except Exception as exc:  # noqa: BLE001 (the test classifies every outcome below)
                outcomes[i] = {"error": f"{type(exc).__name__}: {exc}"}
            outcomes[i]["latency_s"] = time.perf_counter() - start

        t0 = time.perf_counter()
        threads = [threading.Thread(target=user, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT_S + 30)
        wall = time.perf_counter() - t0
    after = model_hash(base.unet)
    done = [o["latency_s"] for o in outcomes if "zip" in o]
    numbers = {"clients": CLIENTS, "queue": QUEUE, "wall_s": round(wall, 2), "completed": len(done),
               "queue_full": sum("queue is full" in o.get("error", "").lower() for o in outcomes),
               "latency_s": [round(o["latency_s"], 2) for o in outcomes],
               "latency_completed_median_s": round(sorted(done)[len(done) // 2], 2) if done else None}
    (artifacts_dir / "load_test.json").write_text(json.dumps(numbers, indent=2) + "\n")
    print("\nload test:", json.dumps(numbers))
    return plans, outcomes, before, after


def test_every_request_completes_or_is_told_the_queue_is_full(load_results):
    _, outcomes, _, _ = load_results
    assert all(outcomes), "a request got no answer at all"
    for outcome in outcomes:
        if "error" in outcome:
            assert "queue is full" in outcome["error"].lower(), outcome["error"]
        else:
            assert "Done" in outcome["status"], outcome["status"]
    assert sum("zip" in o for o in outcomes) >= 1 + QUEUE["max_size"] - 1  # the line was used, not just one run


def test_each_user_receives_their_own_run(load_results):
    plans, outcomes, _, _ = load_results
    zips = [o["zip"] for o in outcomes if "zip" in o]
    assert len(set(zips)) == len(zips), "two users were handed the same run"
    for plan, outcome in zip(plans, outcomes, strict=True):
        if "zip" in outcome:
            card, originals = read_zip(outcome["zip"])
            assert card["request"]["seed"] == plan["seed"]
            assert card["settings"]["iterations"] == plan["iterations"]
            first = min(originals)  # 000_forget_<prompt>_seed<first seed>.png: the images were made from my seed
            assert first.startswith("000_forget_") and first.endswith(f"_seed{plan['seed']}.png"), first


def test_same_seed_same_original_whatever_others_unlearned(load_results):
    plans, outcomes, _, _ = load_results
    originals: dict[int, list[dict[str, bytes]]] = {}
    for plan, outcome in zip(plans, outcomes, strict=True):
        if "zip" in outcome:
            originals.setdefault(plan["seed"], []).append(read_zip(outcome["zip"])[1])
    shared = [group for group in originals.values() if len(group) > 1]
    for group in shared:
        assert all(g == group[0] for g in group[1:]), "one user's edit changed what another user's original shows"
    firsts = [group[0] for group in originals.values()]
    assert len({tuple(sorted(f.values())) for f in firsts}) == len(firsts), "different seeds gave identical originals"


def test_base_model_is_bit_identical_after_the_burst(load_results):
    _, _, before, after = load_results
    assert before == after


def test_cancel_stops_the_method_promptly():
    def workers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("unlearn-")]

    with launched_app(**QUEUE) as url:
        client = gradio_client.Client(url, verbose=False, httpx_kwargs={"timeout": 60})
        # the most ESD iterations the repo's profile allows, each short (the method checks for a cancel
        # between iterations: a cancel waits for the iteration in progress)
        job = client.submit(*unlearn_args(settings={"iterations": 300, "ddim_steps": 4, "batch_size": 1}, **TINY),
                            api_name="/unlearn")
        deadline = time.monotonic() + 60
        while not workers() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert workers(), "the run never started"
        time.sleep(1.0)  # a few iterations in
        cancelled = time.monotonic()
        job.cancel()
        while workers() and time.monotonic() - cancelled < 30:
            time.sleep(0.05)
        stopped_after = time.monotonic() - cancelled
        assert not workers(), f"the method was still running {stopped_after:.0f} s after cancel"
        assert stopped_after < 10, stopped_after
        outputs = job.outputs()
        assert not any("Done" in str(o[0]) for o in outputs if o), "the run finished before the cancel: make it longer"
        print(f"\ncancel: the method's worker stopped {stopped_after:.2f} s after job.cancel() was called")
