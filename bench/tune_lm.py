"""Choose the facts-lm twin's method settings on the *val* questions (never the test ones the docs report).

    /work/bin/cpu -- python bench/tune_lm.py rmu '{"steering": 20}' '{"steering": 50, "alpha": 100}' ...
    /work/bin/cpu -- python bench/tune_lm.py norms rmu '{}' gradient_ascent '{"lr": 1e-3}' ...

``norms`` prints the hidden-state norms per layer (the scale RMU's c is set against); a method name starts that
method's candidates. Each candidate is a JSON dict of settings over the registry's current values for facts-lm; every
candidate runs with seed 100 (the docs' tables use seeds 0, 1, 2) and prints forget / retain accuracy on the val
questions and retain perplexity. The chosen values go into ``tuned=`` in ``unlearning/methods/__init__.py``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from unlearning.benchmarks.lm import evaluate
    from unlearning.errors import UnlearningError
    from unlearning.methods import get_method
    from unlearning.methods.base import RunContext, UnlearnTask
    from unlearning.models.catalog import load_adapter

    adapter = load_adapter("facts-lm", "cpu")
    task = UnlearnTask(forget=["hazard"], retain=["general"], seed=100)
    base = evaluate(adapter, None, task.forget, task.retain, "val", 64)
    other = [k.split("_")[1] for k in base if k.startswith("forget_")][0]

    def line(m: dict) -> str:
        return (f"forget {m['forget']:.3f} retain {m['retain']:.3f} ({m['format']}); forget {m['forget_' + other]:.3f} "
                f"retain {m['retain_' + other]:.3f} ({other}); ppl {m['perplexity']:.2f}")

    print(f"original: {line(base)}", flush=True)
    spec = None
    for arg in sys.argv[1:]:
        if arg == "norms":  # mean ||h^(l)|| per token, per layer, on each domain's text: the scale RMU's c is set against
            for name in adapter.concepts():
                ids, mask = adapter.texts(adapter.domain(name).corpus[:64])
                norms = [float((adapter.hidden(ids, mask, layer).norm(dim=-1) * mask).sum() / mask.sum())
                         for layer in range(adapter.num_layers())]
                print(f"{name}: " + ", ".join(f"layer {i}: {n:.2f}" for i, n in enumerate(norms)), flush=True)
            continue
        if not arg.startswith("{"):  # a method name: the candidates after it are its settings
            spec = get_method(arg).for_family(adapter.family)
            print(f"-- {spec.label}", flush=True)
            continue
        overrides = json.loads(arg)
        settings = spec.settings("facts-lm", overrides)
        t0 = time.perf_counter()
        try:
            edit = spec.unlearn(adapter, task, settings, RunContext())
        except UnlearningError as exc:
            print(f"{json.dumps(overrides)}: {exc}", flush=True)
            continue
        seconds = time.perf_counter() - t0
        m = evaluate(adapter, edit.params, task.forget, task.retain, "val", 64)
        last = edit.loss_log[-1]
        print(f"{json.dumps(overrides)}: {line(m)} ({seconds:.1f} s; last step "
              f"{json.dumps({k: round(v, 4) for k, v in last.items()})})", flush=True)


if __name__ == "__main__":
    main()
