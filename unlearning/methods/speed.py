"""SPEED: scalable, precise and efficient concept erasure (null-space constrained closed form).

Li, Ouxiang et al. "SPEED: Scalable, Precise, and Efficient Concept Erasure for Diffusion Models", ICLR 2026
(arXiv 2503.07392). One closed-form step per cross-attention projection (value projections by default), no
images, no training.

Notation (as in the paper's code):
    c_t, c_a   embedding of the last subject token (the token before end-of-text) of a target concept and of
               its anchor; the empty anchor "" has no subject token, so its index lands on BOS (as in the code)
    S_tt       mean over target concepts of c_t c_t^T;   S_at  mean of c_a c_t^T
    c_r        last-subject embeddings of the retain texts (texts naming a target concept are dropped first)
    P          null-space projector of the retain set: eigenvectors of mean(c_r c_r^T) with eigenvalue < tau
    K2         [BOS row of "", k-means centres of its other rows]: directions the edit must not move (IEC)

The edit of each projection W (d_out x d_in) minimises ||(W + D) c_t - W c_a||^2 + alpha ||D||^2 with D
restricted to the retain null space (D = D P) and D K2 = 0 (exact when lam = 0):

    M = (S_tt P + alpha I)^-1
    D = W (S_at - S_tt) P (I - M K2 (K2^T P M K2 + lam I)^-1 K2^T P) M,      W <- W + D

The retain set is refined per projection before P is computed:
1. IPF (influence-based prior filtering): a plain UCE-style edit E = W (S_at - S_tt)(I + S_tt)^-1 is formed and
   only retain embeddings whose response ||E c_r|| is above the mean are kept (the ones the edit would hurt).
2. DPA (directed prior augmentation): ``augmentations`` noisy copies of each kept embedding, the noise projected
   on W's least right-singular direction (a direction W barely reads), keeping the copies whose response is
   above the mean: more retain directions without new meaning.
3. IEC (invariant equality constraints): K2 above, so the empty prompt and BOS keep their outputs.

``tau`` is an absolute eigenvalue cut, so it depends on the embedding scale: on a twin whose text width is 64
(not 768) the eigenvalues of the retain Gram differ; the twin-tuned value says what it is (methods/__init__.py).
``tokens = "concept+eos"`` (not in the paper) erases the concept's tokens and the end-of-text token as UCE does,
for small text encoders whose end-of-text token carries most of the prompt.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch

from ..edit import Edit
from ..models.base import FamilyAdapter
from .base import RunContext, UnlearnTask, setting
from .closed_form import kv_weights, package_edit, weight_residuals


@dataclass
class SPEEDSettings:
    params: str = setting("V", "which cross-attention projections are edited (paper: V; K or KV optional)", choices=("V", "K", "KV"))
    tau: float = setting(0.1, "tau: eigenvalue cut of the retain Gram below which a direction counts as null space "
                         "(paper: 0.1 for few concepts, 1e-4 for 10-100 celebrities)", low=0.0)
    alpha: float = setting(1.0, "alpha: ridge of the update (paper: 1.0 few concepts, 0.05 many, 0.7 nudity)", low=0.0, low_inclusive=False)
    lam: float = setting(0.0, "lam: softness of the IEC constraint D K2 = 0 (0 = exact; paper 0.5 for nudity)", low=0.0)
    augmentations: int = setting(10, "DPA: noisy copies per retain embedding (0 switches IPF and DPA off)", low=0, high=100)
    prior_filter: bool = setting(True, "IPF: keep only retain embeddings the plain edit would move most (paper: off for 10-100 "
                                 "celebrities)")
    clusters: int = setting(3, "IEC: k-means centres of the empty prompt's non-BOS rows kept fixed", low=0, high=16)
    tokens: str = setting("last_subject", "erased rows: the last subject token (paper) or the concept tokens + end-of-text",
                          choices=("last_subject", "concept+eos"))


def subject_positions(adapter: FamilyAdapter, text: str | None, tokens: str) -> list[int]:
    """Rows SPEED reads of a prompt: its last subject token (the empty prompt: BOS), or all its tokens + EOS."""
    if tokens == "concept+eos":
        return adapter.token_positions(text or "", include_last=True)
    if not text:
        return [0]  # "" has no subject token: the code's index (attention_mask.sum() - 2) is BOS
    return adapter.token_positions(text, include_last=False)[-1:]


def invariant_directions(adapter: FamilyAdapter, clusters: int, seed: int) -> torch.Tensor:
    """K2 (d_in x (1 + k)): the empty prompt's BOS row and k-means centres of its other rows."""
    null = adapter.null_condition(1)[0].double().cpu()  # (T, d_in)
    cols = [null[0]]
    rest = null[1:]
    k = min(clusters, len(rest))
    if k > 0:
        from sklearn.cluster import KMeans

        centres = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(rest.numpy()).cluster_centers_
        cols += list(torch.from_numpy(centres))
    return torch.stack(cols, dim=1)  # (d_in, 1 + k)


def filter_retain(erase_w: torch.Tensor, c_r: torch.Tensor) -> torch.Tensor:
    """IPF for one projection: the retain columns whose response to the plain edit is above the mean."""
    norms = torch.linalg.norm(erase_w @ c_r, dim=0)
    return c_r[:, norms > norms.mean()]


def augment_retain(w: torch.Tensor, erase_w: torch.Tensor, c_r: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """DPA for one projection: n noisy copies per retain column, the noise projected on W's least right-singular
    direction, keeping the copies whose response to the plain edit is above the mean (d_in x n')."""
    v_min = torch.linalg.svd(w, full_matrices=False).Vh[-1:]  # (1, d_in)
    noise = torch.randn(c_r.shape[1] * n, c_r.shape[0], generator=g, dtype=w.dtype)  # (n', d_in)
    copies = c_r.repeat(1, n) + (noise @ v_min.T @ v_min).T
    norms = torch.linalg.norm(erase_w @ copies, dim=0)
    return copies[:, norms > norms.mean()]


def speed_update(w: torch.Tensor, s_tt: torch.Tensor, s_at: torch.Tensor, c_r: torch.Tensor, k2: torch.Tensor,
                 s: SPEEDSettings, g: torch.Generator) -> torch.Tensor:
    """D for one projection W (float64)."""
    d = w.shape[1]
    eye = torch.eye(d, dtype=w.dtype)
    if s.augmentations > 0 and c_r.shape[1] > 0:
        erase_w = w @ (s_at - s_tt) @ torch.linalg.inv(eye + s_tt)  # the plain edit E
        if s.prior_filter:
            c_r = filter_retain(erase_w, c_r)
        c_r = torch.cat([c_r, augment_retain(w, erase_w, c_r, s.augmentations, g)], dim=1)
    s_rr = c_r @ c_r.T / max(c_r.shape[1], 1)  # mean c_r c_r^T
    evals, evecs = torch.linalg.eigh(s_rr)
    null = evecs[:, evals < s.tau]
    p = null @ null.T  # P
    m = torch.linalg.inv(s_tt @ p + s.alpha * eye)  # M = (S_tt P + alpha I)^-1
    inner = torch.linalg.pinv(k2.T @ p @ m @ k2 + s.lam * torch.eye(k2.shape[1], dtype=w.dtype))
    return w @ (s_at - s_tt) @ p @ (eye - m @ k2 @ inner @ k2.T @ p) @ m


def unlearn(adapter: FamilyAdapter, task: UnlearnTask, settings: SPEEDSettings, ctx: RunContext) -> Edit:
    started = time.perf_counter()
    s = settings
    # 1. target / anchor rows c_t, c_a and their means S_tt, S_at
    texts, positions = [], []
    for concept in task.forget:
        pos = subject_positions(adapter, concept, s.tokens)
        anchor = task.anchor_of(concept)
        anchor_pos = subject_positions(adapter, anchor, s.tokens) if s.tokens == "last_subject" else pos
        texts += [concept, anchor]
        positions += [pos, anchor_pos]
    # 2. retain rows: retained concepts and their prompts, minus any text naming a target concept
    words = [re.compile(rf"\b{re.escape(c.lower())}\b") for c in task.forget]
    retain = [t for c in task.retain for t in dict.fromkeys([c, adapter.prompt_for(c)]) if not any(w.search(t.lower()) for w in words)]
    rows = adapter.token_embeddings_many(texts + retain, positions + [subject_positions(adapter, t, s.tokens) for t in retain])
    rows = [r.double().cpu() for r in rows]
    c_t = torch.cat(rows[0 : 2 * len(task.forget) : 2]).T  # (d_in, n_t)
    c_a = torch.cat(rows[1 : 2 * len(task.forget) : 2]).T
    c_r = torch.cat(rows[2 * len(task.forget) :]).T if retain else torch.zeros(c_t.shape[0], 0, dtype=c_t.dtype)
    s_tt, s_at = c_t @ c_t.T / c_t.shape[1], c_a @ c_t.T / c_t.shape[1]
    # 3. IEC directions, then one solve per projection
    k2 = invariant_directions(adapter, s.clusters, task.seed)
    g = torch.Generator().manual_seed(task.seed)
    w0 = kv_weights(adapter, s.params)
    new = {name: w + speed_update(w, s_tt, s_at, c_r, k2, s, g) for name, w in w0.items()}
    res = weight_residuals(w0, new, c_t, c_a, torch.cat([c_r, k2], dim=1))
    res["invariant_drift"] = weight_residuals(w0, new, c_t, c_a, k2)["preserve_drift"]
    return package_edit(adapter, task, new, res, method="speed", settings=settings, ctx=ctx, started=started)
