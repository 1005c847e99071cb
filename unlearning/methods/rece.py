"""RECE: reliable and efficient concept erasure (closed form with derived adversarial embeddings).

Gong, Chen, Wei, Chen, Jiang. "Reliable and Efficient Concept Erasure of Text-to-Image Diffusion Models",
ECCV 2024. Edits the key and value projections W_l of every cross-attention layer (W_l^0: the original).

Starting point: a UCE-erased model (``start = "uce"``; the paper starts from UCE checkpoints) or the original
(``"scratch"``). Each epoch then:

1. derives the embedding e' that makes the *edited* projections reproduce what the original ones did with the
   concept's embedding e (all token rows of the concept's prompt; the "regzero" variant):

       e' = argmin_x sum_l ||W_l x - W_l^0 e||^2 + lam_r ||x||^2 = (lam_r I + sum_l W_l^T W_l)^-1 (sum_l W_l^T W_l^0) e

   i.e. a prompt embedding that regenerates the concept after the edit;
2. erases e' with a UCE step from the current weights, mapping it to the empty prompt's rows (v* = W_l e(" "),
   or the anchor's prompt when one is given) while the empty prompt r = " " is kept:

       W_l <- (lam W_l + sum v* e'^T + p sum W_l r r^T)(lam I + sum e' e'^T + p sum r r^T)^-1

3. samples validation images of the concept, scores them with the model's evaluator and keeps the epoch with
   the lowest forget rate (the paper uses NudeNet / Q16 on a validation prompt file; here the twin's evaluator on
   seeds no comparison uses, so the choice does not see the test images). Without an evaluator (real SD with no
   CLIP weights on disk) no validation images are made and the last epoch is kept.

Every W_l is W_l^0 times one shared d_in x d_in factor F (UCE and each epoch multiply it from the right), so
with G = sum_l W_l^0T W_l^0 the sums above are F^T G F and F^T G: the whole method runs on d_in x d_in
matrices and one product per layer at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..edit import Edit
from ..models.base import FamilyAdapter
from .base import RunContext, UnlearnTask, setting
from .closed_form import concept_rows, gram, kv_weights, package_edit, right_divide, weight_residuals
from .uce import UCESettings, uce_factor


@dataclass
class RECESettings:
    epochs: int = setting(3, "rounds of derive-then-erase (paper: 3 nudity, 2 other I2P concepts, 1 objects and styles)", low=1, high=20)
    regular_scale: float = setting(0.1, "lam_r: ridge of the derived embedding (paper: 0.1; 1e-3 for styles and hard objects)",
                                   low=0.0, low_inclusive=False)
    lam: float = setting(0.1, "lam: weight of the current weights in each UCE step", low=0.0, low_inclusive=False)
    preserve_scale: float = setting(0.1, "p: weight of the kept empty prompt (and of retained concepts, if preserved)", low=0.0)
    erase_scale: float = setting(1.0, "weight of the derived embeddings' terms", low=0.0, low_inclusive=False)
    preserve_retained: bool = setting(False, "also keep the retained concepts' prompts in each step (paper: only \" \")")
    start: str = setting("uce", "starting point: a UCE edit with UCE's own defaults (paper) or the original model",
                         choices=("uce", "scratch"))
    select_epoch: bool = setting(True, "score each epoch on validation samples and keep the best (needs an evaluator)")
    validation_samples: int = setting(16, "validation images per epoch (at least one per concept)", low=1, high=1024)


def derived_embedding(f: torch.Tensor, g0: torch.Tensor, e: torch.Tensor, lam_r: float) -> torch.Tensor:
    """Step 1: e' = (lam_r I + F^T G F)^-1 F^T G e for columns e (d_in x n), with W_l = W_l^0 F."""
    eye = torch.eye(f.shape[0], dtype=f.dtype)
    return torch.linalg.solve(lam_r * eye + f.T @ g0 @ f, f.T @ g0 @ e)


def uce_step(e_adv: torch.Tensor, target: torch.Tensor, keep: torch.Tensor, s: RECESettings) -> torch.Tensor:
    """Step 2 as a factor M with W_new = W M (every target and kept output is W times a column)."""
    eye = torch.eye(e_adv.shape[0], dtype=e_adv.dtype)
    left = s.lam * eye + s.erase_scale * target @ e_adv.T + s.preserve_scale * gram(keep)
    right = s.lam * eye + s.erase_scale * gram(e_adv) + s.preserve_scale * gram(keep)
    return right_divide(left, right)


def validation_forget_rate(adapter: FamilyAdapter, task: UnlearnTask, w0: dict, f: torch.Tensor, n: int) -> float | None:
    """Step 3: forget rate of W^0 F on validation samples (seeds far from any comparison's); None without an evaluator."""
    edit = Edit(params={name: (w @ f).float() for name, w in w0.items()})
    per = max(1, n // len(task.forget))
    prompts = [adapter.prompt_for(c) for c in task.forget for _ in range(per)]
    targets = [c for c in task.forget for _ in range(per)]
    seeds = [task.seed + 7_000_000 + i for i in range(len(prompts))]
    unet = edit.apply_to_copy(adapter.unet)
    images = torch.cat([adapter.generate(prompts[i : i + 32], seeds[i : i + 32], unet=unet) for i in range(0, len(prompts), 32)])
    hits = adapter.recognises(targets, images)
    return None if hits is None else float(hits.float().mean())


def unlearn(adapter: FamilyAdapter, task: UnlearnTask, settings: RECESettings, ctx: RunContext) -> Edit:
    started = time.perf_counter()
    s = settings
    w0 = kv_weights(adapter)
    g0 = sum(w.T @ w for w in w0.values())  # G = sum_l W_l^0T W_l^0 over every K and V projection
    rows = concept_rows(adapter, task)
    d = rows.erase.shape[0]
    # 0. the starting point F: a UCE edit (UCE's defaults, this task's concepts) or the identity
    if s.start == "uce":
        u = UCESettings()
        f = uce_factor(rows, preserve_scale=u.preserve_scale, erase_scale=u.erase_scale, ridge=u.ridge)
    else:
        f = torch.eye(d, dtype=torch.float64)
    # every token row of each concept's prompt (e), and the same rows of the empty / anchor prompt (targets)
    length = adapter.null_condition(1).shape[1]
    anchors = [task.anchor_of(c) for c in task.forget]
    texts = list(task.forget) + [adapter.prompt_for(a) if a else None for a in anchors]
    full = [r.double().cpu() for r in adapter.token_embeddings_many(texts, [range(length)] * len(texts))]
    e = torch.cat(full[: len(task.forget)]).T  # (d_in, K * T)
    target = torch.cat(full[len(task.forget) :]).T
    keep = adapter.null_condition(1)[0].double().cpu().T  # r = " " (the empty prompt)
    if s.preserve_retained:
        keep = torch.cat([keep, rows.preserve], dim=1)
    judge = s.select_epoch and adapter.can_recognise()  # no evaluator: no validation images are made
    log, best, best_rate, chosen = [], f, None, s.epochs
    solve_s, validation_s = time.perf_counter() - started, 0.0
    for epoch in range(s.epochs):
        t0 = time.perf_counter()
        e_adv = derived_embedding(f, g0, e, s.regular_scale)  # 1.
        f = f @ uce_step(e_adv, target, keep, s)  # 2.
        solve_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        rate = validation_forget_rate(adapter, task, w0, f, s.validation_samples) if judge else None  # 3.
        validation_s += time.perf_counter() - t0
        # how far the edited model still regenerates the concept from e' (0: not at all)
        regen = float(torch.linalg.norm(f @ e_adv - target) / torch.linalg.norm(e_adv - target).clamp_min(1e-12))
        extra = {"validation_forget_rate": rate} if rate is not None else {}
        log.append({"step": epoch + 1, "loss": regen, **extra})
        ctx.report(epoch + 1, s.epochs, regen, **extra)
        if rate is not None and (best_rate is None or rate < best_rate):
            best, best_rate, chosen = f, rate, epoch + 1
        elif rate is None:
            best = f  # no evaluator: the last epoch
    new = {name: w @ best for name, w in w0.items()}
    res = weight_residuals(w0, new, rows.erase, rows.target, rows.preserve)
    res["chosen_epoch"] = chosen
    edit = package_edit(adapter, task, new, res, method="rece", settings=settings, ctx=RunContext(), started=started,
                        timings={"closed_form_s": solve_s, "validation_s": validation_s})
    edit.loss_log = log + [{"step": s.epochs + 1, "loss": res["erase_gap"], **res}]
    return edit
