"""The relearning attack on a language model: fine-tune the unlearned model on forget-domain text, re-score.

The threat WMDP-style unlearning is tested against (Lynch et al. 2024, "Eight Methods to Evaluate Robust
Unlearning in LLMs"; Deeb & Roger 2024, "Do Unlearning Methods Remove Information from Language Model
Weights?"): an attacker who holds some text of the forgotten domain fine-tunes the unlearned model on it for
a few steps. If the knowledge was only hidden, forget-domain accuracy comes back far faster than learning it
from scratch would allow; the original model, fine-tuned the same way, is the reference. With
``data = "retain"`` the fine-tune is benign (retain-domain text only, ResAlign's downstream-user test).

Notation:
    theta_0      the base model (never modified: every weight here is a float32 copy)
    theta_u      theta_0 + edit
    D            ``data_size`` documents of the forget (or retain) domain's corpus, drawn once with the seed
    theta_ft     theta_u after ``steps`` AdamW steps on NLL(D), every weight
    relearn gap  forget accuracy(theta_ft) - forget accuracy(theta_u)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..methods.base import RunContext, UnlearnTask, build_settings, optimise_params, setting
from ..methods.lm_base import TextPool

Weights = dict[str, torch.Tensor]


@dataclass
class TextRelearnSettings:
    """The attacker's fine-tune (chosen for the facts-lm twin: a few seconds on a CPU; no paper default exists for it)."""

    data: str = setting("forget", "text fine-tuned on: forget = the forget domain's corpus (the relearning attack), "
                        "retain = the retain domains' corpus (a benign fine-tune)", choices=("forget", "retain"))
    steps: int = setting(20, "AdamW steps", low=1, high=100_000)
    lr: float = setting(1e-3, "AdamW learning rate", low=0.0, low_inclusive=False)
    batch_size: int = setting(8, "documents per step", low=1, high=512)
    data_size: int = setting(64, "documents the attacker holds (drawn once from the corpus)", low=1, high=1_000_000)
    max_tokens: int = setting(512, "documents are cut to this many tokens", low=2, high=8192)


def text_relearn_settings(overrides: dict | None = None) -> TextRelearnSettings:
    return build_settings(TextRelearnSettings, {}, overrides or {})


def relearn_text(adapter, params: Weights | None, task: UnlearnTask, settings: TextRelearnSettings,
                 ctx: RunContext | None = None) -> tuple[Weights, list[dict], float]:
    """theta_ft from theta_0 + ``params`` (None: the original); returns (every weight, the loss log, seconds)."""
    started = time.perf_counter()
    domains = task.forget if settings.data == "forget" else task.retain
    g = torch.Generator().manual_seed(10_000 + task.seed)
    held = TextPool(adapter, domains, settings.data).batch(settings.data_size, g)  # D: the attacker's documents
    pool = TextPool.of(held)
    weights = {n: (params[n] if params and n in params else p).detach().to(adapter.device, torch.float32).clone()
               .requires_grad_(True) for n, p in adapter.model.named_parameters()}

    def loss_fn(step: int) -> torch.Tensor:
        ids, mask = adapter.batch([adapter.encode(t)[: settings.max_tokens] for t in pool.batch(settings.batch_size, g)])
        return adapter.mean_nll(ids, mask, weights)

    log = optimise_params(list(weights.values()), loss_fn, iterations=settings.steps, lr=settings.lr, ctx=ctx or RunContext(),
                          method="relearning", optimizer="adamw", weight_decay=0.01)
    return {n: w.detach() for n, w in weights.items()}, log, time.perf_counter() - started


def text_relearn_report(adapter, task: UnlearnTask, params: Weights | None, settings: TextRelearnSettings,
                        questions: int | None = None, ctx: RunContext | None = None) -> dict:
    """Forget- and retain-domain accuracy (the run's question format, held-out questions) of theta_0, theta_u,
    theta_ft, and of theta_0 fine-tuned the same way (how fast the domain is learned from nothing but this text)."""
    fmt = getattr(adapter, "twin", {}).get("question_format", "letter")

    def acc(domains: list[str], weights: Weights | None) -> float:
        hits = n = 0
        for name in domains:
            d = adapter.domain(name)
            qs = d.questions[:questions] if questions else d.questions
            hits += adapter.accuracy(qs, d.subject, weights, fmt=fmt) * len(qs)
            n += len(qs)
        return hits / n

    relearned, log, seconds = relearn_text(adapter, params, task, settings, ctx)
    original_ft, _, _ = relearn_text(adapter, None, task, settings)
    rows = []
    for label, weights in (("original", None), ("after unlearning", params), ("after fine-tune", relearned),
                           ("original after the same fine-tune", original_ft)):
        rows.append({"model": label, "forget_rate": acc(task.forget, weights), "retain_accuracy": acc(task.retain, weights)})
    return {"rows": rows, "relearn_gap": rows[2]["forget_rate"] - rows[1]["forget_rate"], "question_format": fmt,
            "attack": f"{settings.steps} AdamW steps (lr {settings.lr:g}, batch {settings.batch_size}) on {settings.data_size} "
            f"{settings.data}-domain documents, every weight", "loss_log": log, "timings": {"relearn_s": seconds}}
