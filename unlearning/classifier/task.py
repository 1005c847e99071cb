"""The classifier family's first member and its unlearning scenarios: a digits CNN, forget sets, metrics.

UAM's own setting (Kim et al., NeurIPS 2025; also SalUn's and "model sparsity"'s): a classifier trained
on a train split must forget part of it, either every sample of one class (class-wise) or a random
subset (random forgetting), and should end up like a model retrained from scratch without that part.

- Model: the evaluator-style :class:`~unlearning.embedded.classifier.ImageClassifier` (conv-GN-SiLU
  stages, global average pool, a feature layer, a linear head), narrower (16, 32, 64), trained here in
  seconds, seeded. It is *not* the digits evaluator: that one scores the diffusion twins and is never
  touched; this one is trained on the same 80 % train split (``datasets.digits.split_indices``) and is
  the thing being unlearned.
- Data: scikit-learn's ``load_digits`` at 16 x 16 in [0, 1], no augmentation (so the original model
  fits its training samples more tightly than unseen ones, which is what a membership test detects).
- Metrics: accuracy on the forget set, the retain set and the test split (for class-wise forgetting the
  test split's retained classes; the forgotten class's test accuracy is reported beside it), and a
  membership-inference score (:func:`mia_efficacy`): the share of forget samples a loss-threshold
  attack, fitted on retain (members) vs test (non-members), calls non-members.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..datasets.digits import CLASS_NAMES, load_digit_images, split_indices
from ..errors import InputError
from ..models.evaluator import ImageClassifier

SCENARIOS = ("class", "random")


@dataclass
class ForgetSplit:
    """One scenario: indices into ``images`` for forget, retain (train minus forget) and test."""

    images: torch.Tensor  # (N, 1, 16, 16) in [0, 1]
    labels: torch.Tensor  # (N,)
    forget: torch.Tensor  # indices of the training samples to forget
    retain: torch.Tensor  # the other training samples
    test: torch.Tensor  # held-out split (never trained on)
    scenario: str  # "class" or "random"
    forget_class: int | None = None  # class-wise: the class forgotten

    @property
    def train(self) -> torch.Tensor:
        return torch.cat([self.retain, self.forget])

    def describe(self) -> str:
        what = f"class {self.forget_class}" if self.scenario == "class" else "random samples"
        return f"{what}: forget {len(self.forget)}, retain {len(self.retain)}, test {len(self.test)}"


def make_split(scenario: str, *, forget_class: int | None = 3, forget_count: int | None = None,
               forget_fraction: float | None = None, seed: int = 0) -> ForgetSplit:
    """The digits train / test split with a forget set: a whole class, or a seeded random subset of the
    training samples (``forget_count`` samples, or ``forget_fraction`` of them)."""
    if scenario not in SCENARIOS:
        raise InputError(f"scenario must be one of {', '.join(SCENARIOS)}; got '{scenario}'.")
    images, labels = load_digit_images()
    train_idx, test_idx = split_indices(len(labels))
    if scenario == "class":
        if forget_class is None or not 0 <= int(forget_class) < len(CLASS_NAMES):
            raise InputError(f"forget class must be one of 0..{len(CLASS_NAMES) - 1}; got {forget_class}.")
        is_forget = labels[train_idx] == int(forget_class)
        forget, retain = train_idx[is_forget], train_idx[~is_forget]
        return ForgetSplit(images, labels, forget, retain, test_idx, scenario, int(forget_class))
    n_train = len(train_idx)
    if (forget_count is None) == (forget_fraction is None):
        raise InputError("random forgetting takes a forget count or a forget fraction (one of them).")
    if forget_fraction is not None:
        if not 0 < forget_fraction < 1:
            raise InputError(f"forget fraction must be between 0 and 1 (exclusive); got {forget_fraction}.")
        forget_count = int(round(forget_fraction * n_train))
    if forget_count < 1:
        raise InputError(f"the forget set is empty ({forget_count} samples); forget at least one sample.")
    if forget_count >= n_train:
        raise InputError(f"cannot forget {forget_count} samples: the training split has {n_train}, and at least one "
                         "must be retained.")
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
    return ForgetSplit(images, labels, train_idx[perm[:forget_count]], train_idx[perm[forget_count:]], test_idx, scenario)


def build_model(seed: int) -> ImageClassifier:
    torch.manual_seed(seed)
    return ImageClassifier(in_channels=1, num_classes=len(CLASS_NAMES), widths=(16, 32, 64), feature_dim=64,
                           class_names=CLASS_NAMES)


def train_model(split: ForgetSplit, indices: torch.Tensor, *, epochs: int = 15, lr: float = 3e-3, batch_size: int = 64,
                seed: int = 0) -> ImageClassifier:
    """A fresh model trained on ``indices`` (the original: the whole train split; retrain: the retain set).
    AdamW with a one-cycle schedule; a few seconds on a CPU."""
    if len(indices) == 0:
        raise InputError("nothing to train on: the index set is empty.")
    model = build_model(seed)
    steps_per_epoch = math.ceil(len(indices) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = indices[torch.randperm(len(indices), generator=g)]
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(model(split.images[idx]), split.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def per_sample_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(images), labels, reduction="none")


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model(images).argmax(1) == labels).float().mean()) if len(labels) else float("nan")


def mia_efficacy(model: torch.nn.Module, split: ForgetSplit) -> float:
    """Loss-threshold membership inference (the MIA-efficacy of Jia et al. 2023 and SalUn, with the loss as
    the attack feature): the threshold that best tells retain samples (members) from test samples
    (non-members) by balanced accuracy is fitted on this model, then applied to the forget set; the
    score is the share of forget samples it calls non-members. Higher = more forgotten; a model
    retrained without the forget set gives the value to aim for."""
    members = per_sample_loss(model, split.images[split.retain], split.labels[split.retain])
    others = per_sample_loss(model, split.images[split.test], split.labels[split.test])
    candidates = torch.cat([members, others]).unique()  # sorted
    # balanced accuracy of "non-member when loss > threshold" for every candidate threshold
    tpr = (others[None, :] > candidates[:, None]).float().mean(1)  # non-members caught
    tnr = (members[None, :] <= candidates[:, None]).float().mean(1)  # members kept
    threshold = candidates[int(torch.argmax(tpr + tnr))]
    forget = per_sample_loss(model, split.images[split.forget], split.labels[split.forget])
    return float((forget > threshold).float().mean())


def evaluate(model: torch.nn.Module, split: ForgetSplit) -> dict[str, float]:
    """Forget / retain / test accuracy and the MIA AUC. Class-wise: ``test`` is the retained classes' test
    accuracy and ``test_forget`` the forgotten class's."""
    model.eval()
    x, y = split.images, split.labels
    test = split.test
    out = {"forget": accuracy(model, x[split.forget], y[split.forget]), "retain": accuracy(model, x[split.retain], y[split.retain])}
    if split.forget_class is not None:
        kept = y[test] != split.forget_class
        out["test"] = accuracy(model, x[test[kept]], y[test[kept]])
        out["test_forget"] = accuracy(model, x[test[~kept]], y[test[~kept]])
    else:
        out["test"] = accuracy(model, x[test], y[test])
    out["mia"] = mia_efficacy(model, split)
    return out
