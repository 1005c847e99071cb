"""MACE: mass concept erasure (closed-form refinement + a LoRA per concept + closed-form fusion).

Lu, Wang, Li, Liu, Kong. "MACE: Mass Concept Erasure in Diffusion Models", CVPR 2024. All three stages touch
only the cross-attention key and value projections W (W_0: the original).

1. CFR, closed-form refinement. For each prompt of a concept and the same prompt with the concept mapped to its
   anchor ("a red star" -> "a red circle"; dropped when erasing), tokens are aligned from both ends; the
   concept's own tokens are left out and the rows that follow them (which, in a causal text encoder, have read
   the concept: later words, end-of-text and the padding) are contexts e, their aligned rows of the anchor
   prompt give targets W_0 e*. With preservation rows c_p (the paper's COCO / domain caches; here the retained
   concepts' prompts, every row) and the ridge lam towards W_0:

       W_cfr = (lam W_0 + sum W_0 e* e^T + s sum W_0 c_p c_p^T)(lam I + sum e e^T + s sum c_p c_p^T)^-1

2. One rank-r LoRA per concept, W_i = W_cfr + B_i A_i (B_i = 0 at the start), trained on images of the concept
   so the concept's tokens stop being attended where the concept is:

       L_i = sum_l || A_l[pixels in the object mask, concept-token columns] ||_F     (not squared)

   with t drawn from f(t) = sigmoid(0.05 (t - 200)) - sigmoid(0.05 (t - 400)) (importance sampling). The paper
   generates 8 SD images per concept and segments them with Grounded-SAM; on the shapes twin the procedural
   renderer gives the images and their exact masks, and on any other model the images are the original model's
   own samples and the whole image is used (no segmenter ships here). ``use_pooler`` adds every end-of-text
   position (padding included, since SD 1.x and the twin pad with end-of-text) to the concept columns.
3. Fusion: one set of weights that does what every LoRA does on its own concept's prompts e_i (all rows):

       W* = argmin_W sum_i ||W e_i - W_i e_i||^2 + lam ||W - W_cfr||^2 + s sum ||W c_p - W_0 c_p||^2
          = (lam W_cfr + sum_i W_i e_i e_i^T + s W_0 c_p c_p^T)(lam I + sum_i e_i e_i^T + s c_p c_p^T)^-1

Defaults are the single-object configuration (ship -> "ground": lr 1e-5, 50 steps, lam 1e3, no caches, rank 1,
importance sampling, pooler on). The LoRA is parametrised directly (W_cfr + B A through ``torch.func``
on one copy of the UNet); it is merged by stage 3, so only fused K/V weights leave the method.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..edit import Edit
from ..models.base import FamilyAdapter
from .attention import CrossAttentionMaps, concept_attention
from .base import RunContext, UnlearnTask, prompt_pairs, setting
from .closed_form import gram, kv_weights, package_edit, right_divide, weight_residuals


@dataclass
class MACESettings:
    lam: float = setting(1e3, "lam: ridge towards the current weights in CFR and fusion (paper: 1e3 single object, 0 with caches)",
                         low=0.0)
    preserve_scale: float = setting(0.0, "s: weight of the retained concepts' rows (the paper's COCO / domain caches; "
                                    "0 in the single-object config)", low=0.0)
    lora: bool = setting(True, "stage 2: train a LoRA per concept on the attention loss (off: CFR only)")
    iterations: int = setting(50, "AdamW steps of each concept's LoRA (paper 50; 120 for nudity)", low=1, high=10_000)
    lr: float = setting(1e-5, "LoRA learning rate (paper: 1e-5 objects / nudity, 1e-4 celebrities and artists)",
                        low=0.0, low_inclusive=False)
    rank: int = setting(1, "LoRA rank", low=1, high=64)
    images_per_concept: int = setting(8, "training images per concept (paper 8)", low=1, high=1024)
    use_masks: bool = setting(True, "restrict the attention loss to the object's pixels (twin: exact masks; elsewhere: whole image)")
    use_pooler: bool = setting(True, "also push attention off every end-of-text / padding position")
    importance_sampling: bool = setting(True, "draw t from f(t) (peak around t = 200..400) instead of uniformly")


def aligned_rows(adapter: FamilyAdapter, prompt: str, anchor: str | None) -> tuple[list[int], list[int]]:
    """Step 1's token alignment: positions of ``prompt`` outside the differing middle (the concept) and the aligned
    positions of ``anchor``'s prompt, both extended over the padding to the encoder's length."""
    old, new = adapter.token_ids(prompt), adapter.token_ids(anchor)
    length = adapter.null_condition(1).shape[1]
    start = 0
    while start < min(len(old), len(new)) and old[start] == new[start]:
        start += 1
    end_old, end_new = len(old) - 1, len(new) - 1
    while end_old >= start and end_new >= start and old[end_old] == new[end_new]:
        end_old, end_new = end_old - 1, end_new - 1
    old_idx = list(range(start)) + list(range(end_old + 1, len(old)))
    new_idx = list(range(start)) + list(range(end_new + 1, len(new)))
    shift = old_idx[-1] - new_idx[-1]  # pad both to the same count
    old_idx += list(range(old_idx[-1] + 1, length - max(0, -shift)))
    new_idx += list(range(new_idx[-1] + 1, length - max(0, shift)))
    return old_idx, new_idx


def importance_weights(num_train_timesteps: int) -> torch.Tensor:
    """f(t) = sigmoid(0.05 (t - 200)) - sigmoid(0.05 (t - 400)), normalised over t = 0 .. T-1."""
    t = torch.arange(num_train_timesteps, dtype=torch.float64)
    f = torch.sigmoid(0.05 * (t - 200)) - torch.sigmoid(0.05 * (t - 400))
    return f / f.sum()


def train_lora(adapter: FamilyAdapter, unet: torch.nn.Module, w_cfr: dict[str, torch.Tensor], concept: str, seed: int,
               s: MACESettings, ctx: RunContext, step0: int, total: int) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Stage 2 for one concept: {name: B A} (float64) and the loss log."""
    g = torch.Generator().manual_seed(seed)
    x0, captions = adapter.captioned_data(concept, s.images_per_concept, seed)
    masks = adapter.object_masks(concept, s.images_per_concept, seed) if s.use_masks else None
    with torch.no_grad():
        conds = adapter.encode(captions)
    positions = [adapter.concept_positions(c, concept, s.use_pooler) for c in captions]
    base = {n: w.float().to(adapter.device) for n, w in w_cfr.items()}
    lora = {}
    for name, w in base.items():  # B = 0, A ~ N(0, 1 / r^2) as in LoRA
        a = torch.randn(s.rank, w.shape[1], generator=g) / s.rank
        lora[name] = (torch.zeros(w.shape[0], s.rank, device=w.device, requires_grad=True), a.to(w.device).requires_grad_(True))
    opt = torch.optim.AdamW([p for pair in lora.values() for p in pair], lr=s.lr)
    t_all = importance_weights(adapter.noise_scheduler.config.num_train_timesteps)
    t_weights = t_all if s.importance_sampling else None
    log = []
    with CrossAttentionMaps(unet) as maps:
        for step in range(s.iterations):
            i = int(torch.randint(len(x0), (1,), generator=g))  # batch 1, as the paper
            x = x0[i : i + 1].float()
            noise = torch.randn(x.shape, generator=g).to(x)
            t = torch.multinomial(t_weights, 1, generator=g) if t_weights is not None else torch.randint(len(t_all), (1,), generator=g)
            x_t = adapter.noise_scheduler.add_noise(x, noise, t)
            weights = {n: base[n] + b @ a for n, (b, a) in lora.items()}  # W_i = W_cfr + B A
            maps.clear()
            torch.func.functional_call(unet, weights, (x_t, t.to(x.device)), {"encoder_hidden_states": conds[i : i + 1].float()})
            parts = concept_attention(maps.probabilities(), [positions[i]], None if masks is None else masks[i : i + 1])
            loss = sum(torch.linalg.norm(p) for p in parts)  # sum over layers of || A_l[mask, concept] ||_F
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            log.append({"step": step0 + step + 1, "loss": loss.item(), "concept": float(step0 // s.iterations)})
            ctx.report(step0 + step + 1, total, loss.item())
    return {n: (b @ a).detach().double().cpu() for n, (b, a) in lora.items()}, log


def unlearn(adapter: FamilyAdapter, task: UnlearnTask, settings: MACESettings, ctx: RunContext) -> Edit:
    started = time.perf_counter()
    s = settings
    w0 = kv_weights(adapter)
    d = next(iter(w0.values())).shape[1]
    eye = torch.eye(d, dtype=torch.float64)
    length = adapter.null_condition(1).shape[1]
    # 1. CFR: aligned rows of every (prompt, anchor prompt) pair, preservation rows of the retained concepts
    pairs = prompt_pairs(adapter, task)
    align = [aligned_rows(adapter, p.prompt, p.anchor) for p in pairs]
    keep_texts = [adapter.prompt_for(c) for c in task.retain]
    texts = [p.prompt for p in pairs] + [p.anchor for p in pairs] + keep_texts
    full = [r.double().cpu() for r in adapter.token_embeddings_many(texts, [range(length)] * len(texts))]
    n = len(pairs)
    e = torch.cat([full[i][old] for i, (old, _) in enumerate(align)]).T  # (d_in, rows)
    e_star = torch.cat([full[n + i][new] for i, (_, new) in enumerate(align)]).T
    c_p = torch.cat(full[2 * n :]).T if keep_texts else torch.zeros(d, 0, dtype=torch.float64)
    g_p = s.preserve_scale * gram(c_p)
    m_cfr = right_divide(s.lam * eye + e_star @ e.T + g_p, s.lam * eye + gram(e) + g_p)
    w_cfr = {name: w @ m_cfr for name, w in w0.items()}
    cfr_s = time.perf_counter() - started
    # 2. a LoRA per concept, one after another, on a copy of the UNet carrying W_cfr
    log, loras = [], []
    if s.lora:
        unet = Edit(params={k: v.float() for k, v in w_cfr.items()}).apply_to_copy(adapter.unet).float()
        for p in unet.parameters():
            p.requires_grad_(False)
        total = s.iterations * len(task.forget)
        for k, concept in enumerate(task.forget):
            delta, entries = train_lora(adapter, unet, w_cfr, concept, task.seed + 7919 * k, s, ctx, k * s.iterations, total)
            loras.append(delta)
            log += entries
    lora_s = time.perf_counter() - started - cfr_s
    # 3. fusion: every concept's prompts e_i (all rows) through its own W_i = W_cfr + B_i A_i
    t0 = time.perf_counter()
    new = dict(w_cfr)
    if loras:
        grams = [gram(torch.cat([full[i] for i, p in enumerate(pairs) if p.concept == k]).T) for k in range(len(task.forget))]
        right = s.lam * eye + sum(grams) + g_p
        for name, w in w0.items():
            left = w_cfr[name] @ (s.lam * eye + sum(grams)) + sum(lo[name] @ g for lo, g in zip(loras, grams, strict=True)) + w @ g_p
            new[name] = right_divide(left, right)
    res = weight_residuals(w0, new, e, e_star, c_p if keep_texts else torch.zeros(d, 1, dtype=torch.float64))
    if log:
        res["final_attention_loss"] = float(sum(x["loss"] for x in log[-5:]) / min(5, len(log)))
    edit = package_edit(adapter, task, new, res, method="mace", settings=settings, ctx=RunContext(), started=started,
                        timings={"closed_form_s": cfr_s + time.perf_counter() - t0, "lora_s": lora_s})
    edit.loss_log = log + [{"step": len(log) + 1, "loss": res["erase_gap"], **res}]
    return edit
