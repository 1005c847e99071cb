"""Forget rate and retain accuracy of one unlearned concept on a twin, the measurement the peer-method tests, their
bench (bench/peer_twins.py) and the held-out tuning (bench/tune_peers.py) share; each passes its own seeds, so the
tuning never looks at the images the tests judge."""

from __future__ import annotations

# the other shapes of shapes-sd: the retained set when the held-out "star" is judged (tests and bench alike)
SHAPES_RETAIN = ["circle", "square", "triangle", "heart", "cross", "ring", "diamond"]


def forget_retain_rates(adapter, unet, concept: str, retain: list[str], n: int = 16, per_retain: int = 2,
                        forget_seed: int = 0, retain_seed: int = 100) -> tuple[float, float]:
    """(share of ``n`` samples of the concept's paraphrases the evaluator still calls the concept, accuracy on
    ``per_retain`` samples of each retained concept); seeds ``forget_seed..`` and ``retain_seed..``, the same for
    every model compared."""
    prompts = adapter.forget_prompts(concept)
    images = adapter.generate([prompts[i % len(prompts)] for i in range(n)], list(range(forget_seed, forget_seed + n)), unet=unet)
    forget = float(adapter.recognises([concept] * n, images).float().mean())
    targets = [c for c in retain for _ in range(per_retain)]
    images = adapter.generate([adapter.prompt_for(c) for c in targets], list(range(retain_seed, retain_seed + len(targets))),
                              unet=unet)
    return forget, float(adapter.recognises(targets, images).float().mean())
