"""The classifier family: forget splits and their bad input, the methods on a briefly trained model, the
membership score, the bench CLI's errors and its torchunlearn hook. Quality numbers are the bench's
(``python -m unlearning bench classifier``), not asserted here."""

from __future__ import annotations

import pytest
import torch

from unlearning.benchmarks import classifier as bench
from unlearning.classifier.methods import METHODS, ClassifierSettings, settings_from, unlearn
from unlearning.classifier.task import evaluate, make_split, mia_efficacy, train_model
from unlearning.cli import main
from unlearning.errors import InputError

EPOCHS = 2  # enough to classify digits well; a few seconds


@pytest.fixture(scope="module")
def class_split():
    return make_split("class", forget_class=3)


@pytest.fixture(scope="module")
def original(class_split):
    return train_model(class_split, class_split.train, epochs=EPOCHS, seed=0)


def test_splits_partition_the_training_data():
    c = make_split("class", forget_class=7)
    assert set(c.labels[c.forget].tolist()) == {7} and 7 not in set(c.labels[c.retain].tolist())
    r = make_split("random", forget_fraction=0.1, seed=1)
    both = torch.cat([r.forget, r.retain])
    assert len(both.unique()) == len(both) == len(c.train)  # disjoint, and all of the train split
    assert not set(r.test.tolist()) & set(both.tolist())
    assert torch.equal(make_split("random", forget_count=20, seed=1).forget, make_split("random", forget_count=20, seed=1).forget)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"scenario": "class", "forget_class": 10}, "forget class must be one of 0..9"),
    ({"scenario": "class", "forget_class": -1}, "forget class must be one of 0..9"),
    ({"scenario": "random", "forget_count": 0}, "the forget set is empty"),
    ({"scenario": "random", "forget_fraction": 0.0001}, "the forget set is empty"),
    ({"scenario": "random", "forget_count": 100_000}, "cannot forget 100000 samples"),
    ({"scenario": "random", "forget_fraction": 1.0}, "between 0 and 1"),
    ({"scenario": "random", "forget_count": 5, "forget_fraction": 0.1}, "one of them"),
    ({"scenario": "shuffle"}, "scenario must be one of class, random"),
])
def test_bad_forget_sets_are_refused(kwargs, message):
    scenario = kwargs.pop("scenario")
    with pytest.raises(InputError, match=message):
        make_split(scenario, **kwargs)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"uam_rho": -1}, "setting 'uam_rho' must be >= 0"),
    ({"uam_gamma": 2}, "setting 'uam_gamma' must be <= 1"),
    ({"lr": 0}, "setting 'lr' must be > 0"),
    ({"steps": 0}, "setting 'steps' must be >= 1"),
])
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(InputError, match=message):
        settings_from(overrides)


def test_uam_on_a_method_without_a_forget_loss_is_refused(class_split, original):
    for method in ("finetune", "l1_sparse"):
        with pytest.raises(InputError, match="UAM needs a forget and a retain loss"):
            unlearn(original, class_split, method, uam=True)
    with pytest.raises(InputError, match="unknown classifier method"):
        unlearn(original, class_split, "scrub")


def test_retraining_without_the_class_forgets_it_and_the_membership_score_sees_it(class_split, original):
    before = evaluate(original, class_split)
    retrained = train_model(class_split, class_split.retain, epochs=EPOCHS, seed=0)
    after = evaluate(retrained, class_split)
    assert before["forget"] > 0.8 and before["test"] > 0.8  # the original learned the class and the rest
    assert after["forget"] < 0.05 and after["test"] > 0.8  # the retrained model never predicts it
    # the never-seen class looks at least as unfamiliar to the attack as it did before
    assert after["mia"] >= before["mia"]


class ConfidenceModel(torch.nn.Module):
    """Logits = pixel (0, 0) x one-hot(pixel (0, 1)): the loss of a sample is set by its first pixel."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, 0, 0, 0, None] * torch.nn.functional.one_hot(images[:, 0, 0, 1].long(), 10).float()


@pytest.mark.parametrize(("forget_confidence", "expected"), [(8.0, 0.0), (0.5, 1.0)])
def test_mia_calls_low_loss_forget_samples_members_and_high_loss_ones_not(forget_confidence, expected):
    from unlearning.classifier.task import ForgetSplit

    n = 30
    conf = torch.cat([torch.full((n,), 8.0), torch.full((n,), 0.5), torch.full((n,), forget_confidence)])  # retain, test, forget
    labels = torch.arange(3 * n) % 10
    images = torch.zeros(3 * n, 1, 2, 2)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = conf, labels.float()
    split = ForgetSplit(images, labels, forget=torch.arange(2 * n, 3 * n), retain=torch.arange(n), test=torch.arange(n, 2 * n),
                        scenario="random")
    assert mia_efficacy(ConfidenceModel(), split) == expected


@pytest.mark.parametrize(("method", "uam"), [(m, False) for m in METHODS] + [("neggrad", True), ("rmu", True)])
def test_every_method_trains_a_copy_and_leaves_the_original(class_split, original, method, uam):
    weights = {n: p.detach().clone() for n, p in original.named_parameters()}
    edited, seconds = unlearn(original, class_split, method, ClassifierSettings(steps=3), uam=uam)
    assert all(torch.equal(p, weights[n]) for n, p in original.named_parameters())
    changed = [n for n, p in edited.named_parameters() if not torch.equal(p, weights[n])]
    if method == "rmu":  # only the last stage and the feature layer train; the head is frozen
        assert changed and not any(n.startswith("head.") for n in changed)
    else:
        assert changed
    assert seconds > 0


def test_random_label_lowers_the_forget_accuracy(class_split, original):
    before = evaluate(original, class_split)["forget"]
    edited, _ = unlearn(original, class_split, "random_label", ClassifierSettings(steps=40, batch_size=32))
    assert evaluate(edited, class_split)["forget"] < before - 0.3


def test_torchunlearn_missing_is_reported_not_raised(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchunlearn" else real(name, *a))
    cls, why = bench.load_torchunlearn_uam()
    assert cls is None and "not installed" in why


@pytest.mark.parametrize(("argv", "message"), [
    (["--scenario", "random", "--fraction", "0"], "between 0 and 1"),
    (["--scenario", "class", "--forget-class", "12"], "forget class must be one of 0..9"),
    (["--set", "uam_gamma=3"], "setting 'uam_gamma' must be <= 1"),
    (["--set", "momentum=0.5"], "unknown setting"),
    (["--train-epochs", "0"], "train epochs must be >= 1"),
])
def test_bench_cli_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(["bench", "classifier", "--no-torchunlearn", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
