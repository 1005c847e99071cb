"""ScaPre: scalable, precise closed-form multi-concept erasure (seed 004; design of this project).

Only the abstract of the ScaPre paper is available: a closed-form, data-free, multi-concept edit
with (1) spectral trace regularisation, (2) geometry alignment and (3) an "Informax decoupler"
that confines each update to the parameters relevant to the erased concepts. This module is our
design of those three ideas as an extension of the UCE closed form (see ``uce.py``) on the
cross-attention key / value projections W (old value W_0, input: text embeddings c, d_in wide).

Notation: C_E (d_in x n_E) erased-concept embeddings, C_A the matching anchor embeddings (empty
prompt when erasing), R = C_A - C_E the change wanted, C_P (d_in x n_P) preserved embeddings (retained
concepts, the empty prompt, BOS). The update is always W = W_0 + diag(g) W_0 N.

1. Spectral trace regularisation (why UCE degrades with many concepts, and the fix).
   UCE sums one term per concept, so with n_E erased concepts the erase Gram C_E C_E^T grows with
   n_E while the preservation term stays fixed: the more concepts, the less the solve cares about
   everything else. ScaPre normalises each Gram by its trace (its total spectral energy):

       N = (R C_E^T / t_E) (C_E C_E^T / t_E + lam C_P C_P^T / t_P + alpha I / d_in)^-1,
       t_E = tr(C_E C_E^T), t_P = tr(C_P C_P^T)

   so erasing and preserving keep the same relative weight (lam) at any number of concepts, and the
   ridge alpha / d_in is relative to the average eigenvalue. Then the spectrum of the update itself
   is bounded: singular values of N above ``max_gain`` are clipped (SVD of a d_in x d_in matrix), so
   stacking many concepts cannot blow up any direction of the embedding space.
2. Geometry alignment. Preserved concepts should keep not only their outputs but their pairwise
   geometry ((W c_j)^T (W c_k)). Both are exact when N C_P = 0, i.e. when the update does not act on
   the preserved subspace. With U_P the eigenvectors of C_P C_P^T holding ``geometry_energy`` of its
   energy, N is retracted towards that null space: N <- N (I - geometry_strength U_P U_P^T).
   strength 1 is a hard null-space projection (geometry exactly kept on span(U_P), but erasure
   weakens when erased and preserved concepts share directions); the default 0.5 meets halfway.
   This is a projection, not a penalty, so the edit stays one linear solve.
3. Informax decoupler (per output channel). For each projection, row r of W_0 carries
   e_E[r] = mean_i (W_0 c_i)_r^2 of erased information and e_P[r] = mean_j (W_0 c_j)_r^2 of preserved
   information. Its share s_r = e_E / (e_E + e_P) relative to the mean share decides how much of
   the update row r receives: g_r = (1 - gamma) + gamma * min(1, s_r / mean(s)). Channels that mostly
   serve preserved content barely move; channels carrying the erased concepts take the full update.

All three are quadratic-objective or projection steps: no data, no training, milliseconds per layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..edit import Edit
from ..models.base import FamilyAdapter
from .base import RunContext, UnlearnTask, setting
from .closed_form import ConceptRows, closed_form_edit, concept_rows


@dataclass
class ScaPreSettings:
    preserve_scale: float = setting(1.0, "lam: weight of preservation relative to erasure (trace-normalised)", low=0.0)
    ridge: float = setting(0.01, "alpha: ridge relative to the average eigenvalue of the normalised Grams", low=0.0, low_inclusive=False)
    max_gain: float = setting(1.5, "spectral cap: largest singular value the embedding-space update may have", low=0.0, low_inclusive=False)
    geometry_energy: float = setting(0.9, "share of the preserved embeddings' energy whose subspace the update is retracted from",
                                     low=0.0, high=1.0)
    geometry_strength: float = setting(0.5, "0 = no retraction, 1 = hard null-space projection", low=0.0, high=1.0)
    decoupler: float = setting(0.5, "gamma: how strongly per-channel information scores scale the update (0 = off)", low=0.0, high=1.0)
    include_last_token: bool = setting(True, "also edit the prompt's last (EOS) token, which has read the whole prompt",
                                       families=("stable-diffusion",))  # a class label has no EOS token


def scapre_factor(rows: ConceptRows, s: ScaPreSettings) -> torch.Tensor:
    """N (d_in x d_in, float64) of steps 1 and 2; the model-space update is diag(g) W_0 N."""
    d = rows.erase.shape[0]
    eye = torch.eye(d, dtype=torch.float64)
    gram_e = rows.erase @ rows.erase.T
    gram_p = rows.preserve @ rows.preserve.T
    t_e, t_p = gram_e.trace().clamp_min(1e-12), gram_p.trace().clamp_min(1e-12)
    change = rows.target - rows.erase  # R
    lhs = gram_e / t_e + s.preserve_scale * gram_p / t_p + (s.ridge / d) * eye
    n = torch.linalg.solve(lhs, (change @ rows.erase.T / t_e).T).T  # (R C_E^T / t_E) lhs^-1, lhs symmetric
    u, sv, vh = torch.linalg.svd(n)
    n = u @ torch.diag(sv.clamp(max=s.max_gain)) @ vh  # spectral cap
    if s.geometry_strength > 0:
        evals, evecs = torch.linalg.eigh(gram_p)
        order = evals.flip(0).clamp_min(0)
        k = int((order.cumsum(0) / order.sum().clamp_min(1e-12) < s.geometry_energy).sum()) + 1
        basis = evecs.flip(1)[:, :k]
        n = n @ (eye - s.geometry_strength * basis @ basis.T)
    return n


def decoupler_gains(w0: torch.Tensor, rows: ConceptRows, gamma: float) -> torch.Tensor:
    """g (d_out,) of step 3 for one projection W_0 (d_out x d_in, float64)."""
    if gamma == 0:
        return torch.ones(w0.shape[0], dtype=torch.float64)
    e_e = (w0 @ rows.erase).pow(2).mean(1)
    e_p = (w0 @ rows.preserve).pow(2).mean(1)
    share = e_e / (e_e + e_p).clamp_min(1e-12)
    return (1 - gamma) + gamma * (share / share.mean().clamp_min(1e-12)).clamp(max=1.0)


def unlearn(adapter: FamilyAdapter, task: UnlearnTask, settings: ScaPreSettings, ctx: RunContext) -> Edit:
    started = time.perf_counter()
    rows = concept_rows(adapter, task, include_last=settings.include_last_token)
    n = scapre_factor(rows, settings)
    return closed_form_edit(adapter, task, rows, n, method="scapre", settings=settings, ctx=ctx, started=started,
                            gains=lambda w0: decoupler_gains(w0, rows, settings.decoupler))
