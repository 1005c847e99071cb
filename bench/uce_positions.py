"""Which token positions carry a shape (or a colour) through shapes-sd's text encoder? (the closed forms' failing
concepts, issue 15)

    python bench/uce_positions.py [--samples 4] [--out bench/results/uce_positions.json]
    python bench/uce_positions.py --kind colours [--samples 2] [--out bench/results/uce_positions_colours.json]

For every shape and colour, the prompt "a {colour} {shape}" is encoded once; its condition (B, 16, 64) is then
sampled by the *original* model with some rows replaced by the rows of the empty prompt at the same positions:

    full          the condition as it is
    no padding    the rows after EOS replaced (the word rows and EOS kept)
    padding only  the word rows and EOS replaced (only the padding rows after EOS kept)
    no shape word the shape word's row replaced (everything else kept)

and the twin's evaluator says how often the shape is still drawn (same seeds and initial noise for every variant).
With ``--kind colours`` the same for every colour: "a {colour} {shape}" over the shapes whose prompt has the common
token count (triangle's name splits into 7 tokens and is left out, so the positions line up), the colour word's row
replaced in the last variant, the evaluator's colour head judging.
A closed-form editor that constrains only the word rows and EOS (UCE here, with include_padding false) leaves the
padding rows as they were; where those alone still draw the shape, the edit cannot erase it.
Also printed per shape: how far the shape's padding rows sit from the other shapes' (mean cosine similarity),
the reason a shared closed form either can or cannot separate them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from unlearning.models.catalog import load_adapter  # noqa: E402

VARIANTS = ("full", "no padding", "padding only", "no shape word")


def masked(cond: torch.Tensor, null: torch.Tensor, rows: list[int]) -> torch.Tensor:
    out = cond.clone()
    out[:, rows] = null[:, rows]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4, help="images per (shape, colour, variant)")
    parser.add_argument("--kind", choices=["shapes", "colours"], default="shapes", help="which concepts to probe")
    parser.add_argument("--out", default=None, help="default bench/results/uce_positions[_colours].json")
    args = parser.parse_args()
    args.out = args.out or f"bench/results/uce_positions{'_colours' if args.kind == 'colours' else ''}.json"
    adapter = load_adapter("shapes-sd", "cpu")
    shapes, colours = adapter.vocabulary["objects"], adapter.vocabulary["attributes"]
    null = adapter.null_condition(1)
    steps, guidance = adapter.sampling.num_inference_steps, adapter.sampling.guidance_scale
    rows = []
    means: dict[str, tuple[torch.Tensor, int]] = {}  # shape -> (mean condition over its prompts (T, D), EOS position)
    def prompt(colour: str, shape: str) -> str:
        return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}"

    if args.kind == "colours":
        length = adapter.token_count(prompt(colours[0], "star"))
        others = [s for s in shapes if adapter.token_count(prompt(colours[0], s)) == length]
        probes = {c: [prompt(c, s) for s in others] for c in colours}
    else:
        probes = {s: [prompt(c, s) for c in colours] for s in shapes}
    key = args.kind[:-1]  # "shape" / "colour": the rows' name for the probed concept
    for shape, prompts in probes.items():  # ``shape``: the probed concept (a colour with --kind colours)
        n = adapter.token_count(prompts[0])  # BOS a colour shape EOS: every prompt here has the same length
        assert all(adapter.token_count(p) == n for p in prompts), prompts
        eos = n - 1
        word = adapter.concept_positions(prompts[0], shape)[-1]  # the probed word's row
        cond = adapter.encode([p for p in prompts for _ in range(args.samples)])  # (B, T, D)
        means[shape] = (cond.float().mean(0), eos)
        seeds = list(range(len(cond)))
        variants = {"full": cond, "no padding": masked(cond, null, list(range(eos + 1, cond.shape[1]))),
                    "padding only": masked(cond, null, list(range(1, eos + 1))), "no shape word": masked(cond, null, [word])}
        entry = {key: shape, "n": len(cond)}
        for name, c in variants.items():
            x0 = adapter.denoise(adapter.initial_noise(seeds), c, num_inference_steps=steps, guidance_scale=guidance)
            hits = adapter.recognises([shape] * len(cond), adapter.to_images(x0))
            entry[name] = float(hits.float().mean())
        rows.append(entry)
        print(json.dumps(entry), flush=True)
    # how alike the shapes' padding rows are (the rows UCE without padding never touches), on the padding positions
    # both prompts share
    def padding_cos(a: str, b: str) -> torch.Tensor:
        (ca, ea), (cb, eb) = means[a], means[b]
        start = max(ea, eb) + 1
        return torch.nn.functional.cosine_similarity(ca[start:].flatten(), cb[start:].flatten(), dim=0)

    for entry in rows:
        others = [padding_cos(entry[key], s) for s in probes if s != entry[key]]
        entry["padding_cos_to_others"] = float(torch.stack(others).mean())
    print(f"| {args.kind[:-1]} | " + " | ".join(VARIANTS) + f" | padding rows: mean cos to other {args.kind} |")
    print("|---|" + "---:|" * (len(VARIANTS) + 1))
    for e in rows:
        print(f"| {e[key]} | " + " | ".join(f"{e[v]:.2f}" for v in VARIANTS) + f" | {e['padding_cos_to_others']:.3f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"samples": args.samples, "kind": args.kind, "prompts": probes, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
