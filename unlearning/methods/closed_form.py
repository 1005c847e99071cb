"""Shared ground of the closed-form cross-attention editors (UCE, ScaPre, SPEED, RECE, MACE's CFR and fusion).

Every cross-attention layer reads the text through two projections, W_k and W_v (``attn2.to_k``,
``attn2.to_v``), and all of them take the *same* input: the text encoder's per-token embeddings c
(d_in = text width). An edit that maps an erased concept's embeddings c_i to the outputs an anchor
produces, W c_i ~ W_0 c*_i, while keeping W c_j ~ W_0 c_j for preserved concepts, makes the UNet
read the erased words as the anchor. Both editors here solve their objective in closed form.

Embedding rows used per concept (adapter.token_positions): the concept's own tokens and the last
(EOS) token of its plain prompt; the anchor's rows are taken at the same positions of the anchor's
prompt (the empty prompt when erasing), as UCE does. The null prompt's rows and the BOS row are always
preserved, since classifier-free guidance runs every image through them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.base import FamilyAdapter
from .base import UnlearnTask


def kv_projection_names(unet: torch.nn.Module, which: str = "KV") -> list[str]:
    """Weight names of every cross-attention key and/or value projection (``which``: "KV", "K" or "V")."""
    ends = tuple(f"attn2.to_{p.lower()}" for p in which)
    return [f"{n}.weight" for n, m in unet.named_modules() if n.endswith(ends) and isinstance(m, torch.nn.Linear)]


def kv_weights(adapter: FamilyAdapter, which: str = "KV") -> dict[str, torch.Tensor]:
    """W_0 of every edited projection, float64 on CPU (copies: the base is never touched)."""
    params = dict(adapter.unet.named_parameters())
    return {n: params[n].detach().double().cpu() for n in kv_projection_names(adapter.unet, which)}


def right_divide(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """left @ right^-1 for a symmetric ``right`` (a Gram plus ridge); least squares where it is singular."""
    try:
        return torch.linalg.solve(right, left.T).T
    except torch.linalg.LinAlgError:
        return torch.linalg.lstsq(right, left.T).solution.T


def gram(cols: torch.Tensor) -> torch.Tensor:
    """C C^T of columns C (d_in x n): the sum of c c^T over its columns."""
    return cols @ cols.T


@dataclass
class ConceptRows:
    """Embedding rows (as columns of d_in x n matrices) of one edit problem."""

    erase: torch.Tensor  # C_E: (d_in, n_E) embeddings of the erased concepts
    target: torch.Tensor  # C_A: (d_in, n_E) matching anchor embeddings (v*_i = W_0 c*_i)
    preserve: torch.Tensor  # C_P: (d_in, n_P) embeddings of preserved concepts (+ null prompt, BOS)
    erase_owner: list[int]  # per erase column: index of its concept in task.forget


def concept_positions(adapter: FamilyAdapter, text: str, *, include_last: bool = True, include_padding: bool = False) -> list[int]:
    """Rows of a text's condition an editor constrains: its own tokens (and EOS); with ``include_padding`` also every
    padding position after it, which in a causal text encoder has read the whole prompt too (UCE's released code
    takes the rows from the concept's last token to the end of the context)."""
    pos = adapter.token_positions(text, include_last)
    if include_padding:
        pos = list(dict.fromkeys([*pos, *range(pos[-1] + 1, adapter.context(adapter.null_condition(1)).shape[1])]))
    return pos


def concept_rows(adapter: FamilyAdapter, task: UnlearnTask, *, include_last: bool = True, include_padding: bool = False) -> ConceptRows:
    """Collect C_E, C_A and C_P for a task (float64 on CPU for stable solves)."""
    texts, positions, owner, kinds = [], [], [], []  # kinds: "erase" / "target" / "keep", encoded in one batch
    for k, concept in enumerate(task.forget):
        anchor = task.anchor_of(concept)
        for text in dict.fromkeys([concept, adapter.prompt_for(concept)]):
            pos = concept_positions(adapter, text, include_last=include_last, include_padding=include_padding)
            texts += [text, adapter.prompt_for(anchor) if anchor else None]
            positions += [pos, pos]
            kinds += ["erase", "target"]
            owner += [k] * len(pos)
    for concept in task.retain:
        for text in dict.fromkeys([concept, adapter.prompt_for(concept)]):
            texts.append(text)
            positions.append(concept_positions(adapter, text, include_last=include_last, include_padding=include_padding))
            kinds.append("keep")
    rows = adapter.token_embeddings_many(texts, positions)
    pick = lambda kind: [r for r, k in zip(rows, kinds, strict=True) if k == kind]  # noqa: E731
    keep = pick("keep") + [adapter.context(adapter.null_condition(1))[0].float()]  # every row of the unconditional branch, BOS included
    as_cols = lambda rows: torch.cat(rows).double().cpu().T.contiguous()  # noqa: E731
    return ConceptRows(as_cols(pick("erase")), as_cols(pick("target")), as_cols(keep), owner)


def edit_residuals(rows: ConceptRows, factor: torch.Tensor) -> dict[str, float]:
    """How well a factor M does its job, in embedding space (W = W_0 M):
    erase_gap   ||M C_E - C_A|| / ||C_E - C_A||   (0: erased concepts read exactly as their anchors; 1: unedited)
    preserve_drift  ||(M - I) C_P|| / ||C_P||      (0: preserved concepts untouched)"""
    eye = torch.eye(factor.shape[0], dtype=factor.dtype)
    gap = torch.linalg.norm(factor @ rows.erase - rows.target) / torch.linalg.norm(rows.erase - rows.target).clamp_min(1e-12)
    drift = torch.linalg.norm((factor - eye) @ rows.preserve) / torch.linalg.norm(rows.preserve).clamp_min(1e-12)
    return {"erase_gap": float(gap), "preserve_drift": float(drift)}


def weight_residuals(w0: dict[str, torch.Tensor], new: dict[str, torch.Tensor], erase: torch.Tensor, target: torch.Tensor,
                     preserve: torch.Tensor) -> dict[str, float]:
    """:func:`edit_residuals` for per-layer weights (when the edit is not one shared factor), over all layers:
    erase_gap  sum ||W C_E - W_0 C_A|| / sum ||W_0 (C_E - C_A)||;  preserve_drift  sum ||(W - W_0) C_P|| / sum ||W_0 C_P||."""
    gap = sum(torch.linalg.norm(new[n].double() @ erase - w @ target) for n, w in w0.items())
    gap0 = sum(torch.linalg.norm(w @ (erase - target)) for w in w0.values())
    drift = sum(torch.linalg.norm((new[n].double() - w) @ preserve) for n, w in w0.items())
    drift0 = sum(torch.linalg.norm(w @ preserve) for w in w0.values())
    return {"erase_gap": float(gap / max(float(gap0), 1e-12)), "preserve_drift": float(drift / max(float(drift0), 1e-12))}


def closed_form_edit(adapter: FamilyAdapter, task: UnlearnTask, rows: ConceptRows, update: torch.Tensor, *, method: str,
                     settings, ctx, started: float, gains=None):
    """Apply W = W_0 + diag(g) W_0 N to every K/V projection (N = ``update``, d_in x d_in; g = ``gains(W_0)``
    per output row, 1 when None) and package the Edit (finite-checked), reporting the residuals."""
    new, mean_gain = {}, []
    for name, w0 in kv_weights(adapter).items():
        change = w0 @ update
        if gains is not None:
            g = gains(w0)
            mean_gain.append(float(g.mean()))
            change = g[:, None] * change
        new[name] = w0 + change
    res = edit_residuals(rows, torch.eye(update.shape[0], dtype=update.dtype) + update)
    if mean_gain:
        res["mean_channel_gain"] = sum(mean_gain) / len(mean_gain)
    return package_edit(adapter, task, new, res, method=method, settings=settings, ctx=ctx, started=started)


def package_edit(adapter: FamilyAdapter, task: UnlearnTask, new: dict[str, torch.Tensor], residuals: dict[str, float], *,
                 method: str, settings, ctx, started: float, timings: dict | None = None):
    """The Edit of a closed-form method: new weights (finite-checked, float32), the residuals as its one-line loss
    log, and timings with seconds per concept."""
    import dataclasses
    import time

    from ..edit import Edit
    from ..errors import DivergedError

    if not all(torch.isfinite(p).all() for p in new.values()):
        raise DivergedError(f"{method}: the closed-form solve gave non-finite weights; raise the ridge and run again. "
                            "The base model is unchanged.")
    ctx.report(1, 1, residuals["erase_gap"], **{k: v for k, v in residuals.items() if k != "erase_gap"})
    elapsed = time.perf_counter() - started
    return Edit(params={n: w.float() for n, w in new.items()}, method=method, settings=dataclasses.asdict(settings),
                loss_log=[{"step": 1, "loss": residuals["erase_gap"], **residuals}],
                timings={"unlearn_s": elapsed, "per_concept_s": elapsed / len(task.forget), **(timings or {})},
                base={"source": adapter.source, "family": adapter.family})
