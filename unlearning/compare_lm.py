"""The language-model view of the comparison engine: the same questions, texts and prompts through the
original and the unlearned model, scored as they go.

One module runs both: the original is the base, the unlearned model is the base with the edit's tensors
substituted (``TextModel`` never changes the base). Everything is streamed in small steps so the UI can
show continuations first and the accuracy table filling in batch by batch:

    continuations   each prompt, greedy and sampled (the same seed, hence the same random numbers, for both)
    questions       held-out multiple-choice questions of the forget and the retain domains, lm-evaluation-harness
                    style (``metrics.lm``): forget_rate = forget-domain accuracy, retain_accuracy = retain-domain
                    accuracy (chance 1 / number of options)
    perplexity      token perplexity on retain-domain text (fluency: does the rest still read as before?)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import metrics as M
from .errors import InputError
from .methods.base import UnlearnTask
from .metrics import lm as LM


@dataclass(frozen=True)
class TextPlan:
    questions: list[tuple[str, str, int]]  # (group "forget" | "retain", domain, question index), in scoring order
    prompts: list[str]  # continued by both models, greedy and sampled
    perplexity_domains: list[str]  # retain domains whose corpus gives the perplexity texts
    perplexity_texts: int = 64  # texts per retain domain
    fmt: str = "letter"  # question format (metrics.lm.FORMATS)
    batch_size: int = 8  # questions per scoring step
    max_new_tokens: int = 20
    temperature: float = 0.8  # sampled continuations
    top_p: float = 0.95
    seed: int = 0

    @property
    def total(self) -> int:
        return len(self.questions)


def plan_text_comparison(adapter, task: UnlearnTask, *, questions_per_domain: int | None = None, prompts: list[str] | None = None,
                         seed: int = 0, fmt: str | None = None, batch_size: int = 8) -> TextPlan:
    """Every held-out question of each domain (or ``questions_per_domain`` of them, evenly spaced through the file:
    question files are often grouped by topic or attribute, and the first N would all ask the same kind of thing),
    forget and retain batches interleaved so both columns fill in together; the twin's demo prompts when none are
    given."""
    groups = {"forget": [], "retain": []}
    for group, domains in (("forget", task.forget), ("retain", task.retain)):
        for d in domains:
            n = len(adapter.domain(d).questions)
            k = min(n, questions_per_domain or n)
            groups[group] += [(group, d, i * n // k) for i in range(k)]
    order = []
    f, r = groups["forget"], groups["retain"]
    for start in range(0, max(len(f), len(r)), batch_size):
        order += f[start : start + batch_size] + r[start : start + batch_size]
    if prompts is None:
        prompts = adapter.default_prompts([*task.forget, *task.retain])
    return TextPlan(order, list(prompts), list(task.retain), fmt=fmt or adapter.twin.get("question_format", "letter"),
                    batch_size=batch_size, seed=seed)


@dataclass
class TextComparisonState:
    plan: TextPlan
    hits: dict[str, list[bool]] = field(default_factory=lambda: {"original": [], "unlearned": []})  # per scored question
    continuations: list[dict] = field(default_factory=list)  # {prompt, seed, greedy: {original, unlearned}, sampled: {...}}
    perplexity: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=lambda: {"original": 0.0, "unlearned": 0.0})
    metrics: dict = field(default_factory=dict)

    @property
    def scored(self) -> int:
        return len(self.hits["original"])

    @property
    def done(self) -> bool:
        return self.scored == self.plan.total and bool(self.perplexity)


def iter_text_comparison(adapter, edit_params: Mapping[str, torch.Tensor], plan: TextPlan, task: UnlearnTask,
                         unlearn_s: float | None = None) -> Iterator[TextComparisonState]:
    """Continuations, then question batches, then perplexity; yields the growing state after each step."""
    state = TextComparisonState(plan)
    models = {"original": None, "unlearned": edit_params}

    def timed(which: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        state.seconds[which] += time.perf_counter() - t0
        return out

    # 1. continuations: greedy, then sampled with one seed per prompt shared by both models
    for i, prompt in enumerate(plan.prompts):
        row = {"prompt": prompt, "seed": plan.seed + i, "greedy": {}, "sampled": {}}
        for which, params in models.items():
            row["greedy"][which] = timed(which, adapter.continue_text, prompt, params=params, max_new_tokens=plan.max_new_tokens)
            row["sampled"][which] = timed(which, adapter.continue_text, prompt, params=params, max_new_tokens=plan.max_new_tokens,
                                          temperature=plan.temperature, top_p=plan.top_p, seed=plan.seed + i)
        state.continuations.append(row)
        state.metrics = score_text(adapter, state, task, unlearn_s)
        yield state
    # 2. the questions, batch by batch
    for start in range(0, plan.total, plan.batch_size):
        batch = plan.questions[start : start + plan.batch_size]
        for which, params in models.items():
            hits = []
            for _, domain, index in batch:
                d = adapter.domain(domain)
                q = d.questions[index]
                scores = timed(which, adapter.loglikelihood, LM.requests(q, d.subject, plan.fmt), params)
                hits.append(max(range(len(scores)), key=scores.__getitem__) == q.answer)
            state.hits[which] += hits
        state.metrics = score_text(adapter, state, task, unlearn_s)
        yield state
    # 3. perplexity on retain-domain text
    texts = [t for d in plan.perplexity_domains for t in adapter.domain(d).corpus[: plan.perplexity_texts]]
    if texts:
        for which, params in models.items():
            state.perplexity[which] = timed(which, adapter.perplexity, texts, params)
    state.metrics = score_text(adapter, state, task, unlearn_s)
    yield state


def score_text(adapter, state: TextComparisonState, task: UnlearnTask, unlearn_s: float | None = None) -> dict:
    """The metrics dict of a language-model run (shown in the UI table, written to metrics.json)."""
    plan, n = state.plan, state.scored
    out: dict = {}
    per_domain: dict[str, dict] = {}
    reference = (f"multiple-choice accuracy on held-out questions ({plan.fmt} format; the option with the highest "
                 "log-likelihood, as lm-evaluation-harness scores WMDP / MMLU)")
    for key, group in (("forget_rate", "forget"), ("retain_accuracy", "retain")):
        idx = [i for i, (g, _, _) in enumerate(plan.questions[:n]) if g == group]
        if not idx:
            continue
        chance = sum(1 / len(adapter.domain(plan.questions[i][1]).questions[plan.questions[i][2]].choices) for i in idx) / len(idx)
        entry = {"n": len(idx), "reference": reference, "chance": chance}
        for which in ("original", "unlearned"):
            rate = M.rate_with_interval(sum(state.hits[which][i] for i in idx), len(idx))
            entry[which], entry[f"{which}_ci95"] = rate.value, [rate.low, rate.high]
        out[key] = entry
    for i, (group, domain, _) in enumerate(plan.questions[:n]):
        d = per_domain.setdefault(domain, {"group": group, "n": 0, "original": 0, "unlearned": 0})
        d["n"] += 1
        for which in ("original", "unlearned"):
            d[which] += int(state.hits[which][i])
    out["per_domain"] = {k: {**v, "original": v["original"] / v["n"], "unlearned": v["unlearned"] / v["n"]}
                         for k, v in per_domain.items()}
    if state.perplexity:
        out["perplexity"] = {**state.perplexity, "n_texts": plan.perplexity_texts * len(plan.perplexity_domains),
                             "compares": f"token perplexity on retain-domain text ({', '.join(plan.perplexity_domains)})"}
    out["timings"] = {"unlearn_s": unlearn_s, "eval_s": dict(state.seconds), "questions": n,
                      "continuations": len(state.continuations)}
    out["samples"] = {"done": n, "total": plan.total}
    return out


class TextView:
    """The language-model family's view for the shared run path (``compare.ComparisonView``)."""

    name = "text"

    def plan(self, adapter, task: UnlearnTask, request, limits) -> TextPlan:
        given = request.prompts.splitlines() if isinstance(request.prompts, str) else request.prompts
        prompts = None if given is None else [str(p).strip() for p in given if str(p).strip()]
        if prompts is not None and len(prompts) > limits.max_samples:
            raise InputError(f"{len(prompts)} prompts to continue; this instance allows {limits.max_samples}.")
        if request.questions is not None and request.questions < 1:
            raise InputError(f"questions per domain must be at least 1 (or empty for all); got {request.questions}.")
        for d in [*task.forget, *task.retain]:
            if not adapter.domain(d).questions:
                raise InputError(f"the domain '{d}' has no questions to score.")
        return plan_text_comparison(adapter, task, questions_per_domain=request.questions, prompts=prompts,
                                    seed=int(request.seed))

    def iterate(self, adapter, edit, plan: TextPlan, task: UnlearnTask, unlearn_s: float | None) -> Iterator[TextComparisonState]:
        return iter_text_comparison(adapter, edit.params, plan, task, unlearn_s)

    def card(self, plan: TextPlan) -> dict:
        per_domain: dict[str, int] = {}
        for _, domain, _ in plan.questions:
            per_domain[domain] = per_domain.get(domain, 0) + 1
        return {"view": self.name, "questions_per_domain": per_domain, "question_format": plan.fmt,
                "scoring": "lm-evaluation-harness style: the option with the highest log-likelihood",
                "prompts": plan.prompts, "max_new_tokens": plan.max_new_tokens,
                "sampling": f"greedy, and temperature {plan.temperature} / top-p {plan.top_p} with seed {plan.seed} + prompt index "
                "(the same random numbers for both models)",
                "perplexity_texts": {d: plan.perplexity_texts for d in plan.perplexity_domains}}

    def write(self, folder: Path, plan: TextPlan, state: TextComparisonState) -> None:
        (folder / "continuations.json").write_text(json.dumps(state.continuations, indent=2) + "\n")
        rows = [{"group": g, "domain": d, "index": i, "original": o, "unlearned": u}
                for (g, d, i), o, u in zip(plan.questions, state.hits["original"], state.hits["unlearned"], strict=False)]
        (folder / "questions.json").write_text(json.dumps(rows) + "\n")
