"""ScaPre's defaults, tuned on a held-out split: the scaling bench's concept order with seed 1 (the
bench itself uses seed 0), k = 4 and 16 colour-shape pairs. Prints forget / retain per setting.

    python bench/tune_scapre.py
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unlearning.benchmarks.scaling import ScalingConfig, concept_order, measure  # noqa: E402
from unlearning.methods import get_method  # noqa: E402
from unlearning.methods.base import RunContext, UnlearnTask  # noqa: E402
from unlearning.models.catalog import load_adapter  # noqa: E402


def main() -> None:
    cfg = ScalingConfig(seed=1, forget_total=32)
    adapter = load_adapter("shapes-sd", "cpu")
    order = concept_order(adapter, cfg.seed)
    retain = order[16:32]
    spec = get_method("scapre")
    base = {k: measure(adapter, adapter.unet, order[:k], retain, cfg)[0] for k in (4, 16)}
    print("original", {k: (round(v["forget_rate"], 2), round(v["retain_accuracy"], 2)) for k, v in base.items()}, flush=True)
    grid = {"geometry_strength": [0.0, 0.5], "decoupler": [0.0, 0.5], "preserve_scale": [0.25, 1.0]}
    if "--fine" in sys.argv:  # second pass: between the two preservation weights of the first
        grid = {"geometry_strength": [0.5], "decoupler": [0.5], "preserve_scale": [0.4, 0.6]}
    for values in itertools.product(*grid.values()):
        overrides = dict(zip(grid, values, strict=True))
        out = {}
        for k in (4, 16):
            edit = spec.unlearn(adapter, UnlearnTask(forget=order[:k], retain=retain), spec.settings("shapes-sd", overrides), RunContext())
            row, _ = measure(adapter, edit.apply_to_copy(adapter.unet), order[:k], retain, cfg)
            out[k] = (round(row["forget_rate"], 2), round(row["retain_accuracy"], 2))
        print(overrides, out, flush=True)


if __name__ == "__main__":
    main()
