"""The peer methods on the trained twins, with their twin-tuned settings: does each one forget?

The settings were tuned on *other* concepts (bench/tune_peers.py: "heart" and "square" on shapes-sd, "5" and "8"
on digits, and a differently seeded set of colour-shape pairs), so "star" and "3" here are held out. The bar is
the issue's: forget rate at most half of the original's; where a method also keeps the other concepts within
10 points, that is asserted too. Where a method does not reach the bar on a twin, the test asserts what was
measured instead, and docs/peer_methods.md reports it. Methods that miss the bar on a twin are not
tested here; bench/peer_twins.py measures all of them.
"""

from __future__ import annotations

import pytest
import torch

from unlearning.benchmarks.rates import SHAPES_RETAIN, forget_retain_rates
from unlearning.methods import METHODS
from unlearning.methods.base import RunContext, UnlearnTask
from unlearning.models.catalog import load_adapter


@pytest.fixture(scope="module")
def sd():
    return load_adapter("shapes-sd", "cpu")


@pytest.fixture(scope="module")
def sd_original(sd):
    return forget_retain_rates(sd, sd.unet, "star", SHAPES_RETAIN)


def unlearned_rates(adapter, model_id: str, method: str, concept: str, retain: list[str]) -> tuple[float, float]:
    spec = METHODS[method]
    edit = spec.unlearn(adapter, UnlearnTask(forget=[concept], retain=retain), spec.settings(model_id), RunContext())
    return forget_retain_rates(adapter, edit.apply_to_copy(adapter.unet), concept, retain)


# the methods that reach the bar on the held-out star; every method's numbers (those that miss it included) are
# measured by bench/peer_twins.py and reported in docs/peer_methods.md
@pytest.mark.parametrize("method", ["speed", "rece", "mace", "sld"])
def test_peer_method_forgets_the_star(sd, sd_original, method):
    f0, r0 = sd_original
    assert f0 >= 0.5, f"the twin should draw stars before unlearning ({f0})"
    f1, r1 = unlearned_rates(sd, "shapes-sd", method, "star", SHAPES_RETAIN)
    assert f1 <= f0 / 2, (method, f0, f1)
    assert r1 >= r0 - 0.10, (method, r0, r1)


@pytest.fixture(scope="module")
def digits():
    return load_adapter("digits", "cpu")


@pytest.mark.parametrize("method", ["speed"])  # RECE on "3" too (bench/peer_twins.py); kept out for the suite's time
def test_peer_method_forgets_the_digit(digits, method):
    retain = [c for c in digits.concepts() if c != "3"]
    f0, r0 = forget_retain_rates(digits, digits.unet, "3", retain, per_retain=2)
    f1, r1 = unlearned_rates(digits, "digits", method, "3", retain)
    assert f1 <= f0 / 2, (method, f0, f1)
    assert r1 >= r0 - 0.10, (method, r0, r1)


def test_sld_cannot_steer_a_label_away_from_itself(digits):
    """Measured property, not a tuning failure: when the prompt *is* the safety concept (a class label), SLD's
    element-wise scale min(1, s_S |eps_p - eps_S|) is 0, so samples of the label are unchanged."""
    spec = METHODS["sld"]
    edit = spec.unlearn(digits, UnlearnTask(forget=["3"], retain=["5"]), spec.settings("digits"), RunContext())
    seeds = list(range(8))
    before = digits.generate(["3"] * 8, seeds)
    after = digits.generate(["3"] * 8, seeds, unet=edit.apply_to_copy(digits.unet))
    assert torch.allclose(before, after, atol=1e-5)
