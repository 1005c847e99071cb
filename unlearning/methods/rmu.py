"""RMU: Representation Misdirection for Unlearning, for causal language models.

Li et al., "The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning", ICML 2024
(Algorithm 1 of the UAM paper's appendix restates it; UAM's authors run UAM on top of it). Written from
the paper; the defaults are the paper's Zephyr-7B run (WMDP-Bio / Cyber).

RMU scrambles the model's internal state on hazardous text and keeps it on everything else: at one layer,
the activations of forget-domain tokens are pushed to a fixed random direction of large norm (later
layers cannot read them any more), while the activations of retain-domain tokens are held where the
frozen model has them. Only the MLP output projections of a few layers at and below that layer train.

Notation (one step; h^(l) is decoder layer l's output, over every real token of the batch):
    x_f, x_r      a batch of forget-domain and of retain-domain texts
    M_upd, M_0    the model being updated and the frozen original (one module here: the updated one runs with
                  the trained copies of the chosen weights substituted)
    u             a random unit vector, entries drawn U(0, 1) then normalised, fixed for the run
    c             the steering coefficient
    L_f           mean || h^(l)_upd(x_f) - c u ||^2               (mean over tokens and dimensions, as MSE)
    L_r           alpha * mean || h^(l)_upd(x_r) - h^(l)_0(x_r) ||^2
    loss          L_f + L_r, minimised with AdamW over W_out of layers l-2 .. l

With ``uam`` on, the step is UAM's (``uam.py``): L_r's gradient is taken at weights moved towards lower L_f
(more forgetting) and its component along grad L_f is removed. Differences from the authors' script, by
choice: the MSE averages over real tokens only (their batches include the padding positions), and the
forget domains take turns step by step as their topics do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..edit import Edit
from ..errors import InputError
from ..models.causal_lm import masked_mse
from .base import RunContext, UnlearnTask, optimise_params, setting
from .lm_base import TextPool, check_layers_text, lm_edit, parse_layers
from .uam import Objective, uam_config, uam_gamma, uam_rho, uam_switch


@dataclass
class RMUSettings:
    iterations: int = setting(150, "steps, one forget and one retain batch each (the paper's 150 batches for Zephyr-7B)",
                              low=1, high=100_000)
    lr: float = setting(5e-5, "AdamW learning rate (paper)", low=0.0, low_inclusive=False)
    batch_size: int = setting(4, "texts per batch, forget and retain each (paper)", low=1, high=512)
    steering: float = setting(6.5, "c: norm of the random target the forget activations are pushed to (paper, Zephyr-7B)",
                              low=0.0, low_inclusive=False)
    alpha: float = setting(1200.0, "alpha: weight of keeping the retain activations (paper, Zephyr-7B)", low=0.0)
    layer: int = setting(7, "l: the decoder layer whose output is steered (0-based; paper: 7 of Zephyr's 32)", low=0)
    update_layers: str = setting("5,6,7", "layers whose MLP output projection trains (paper: l-2, l-1, l)")
    max_tokens: int = setting(512, "texts are cut to this many tokens (paper)", low=2, high=8192)
    uam: bool = uam_switch()
    uam_rho: float = uam_rho()
    uam_gamma: float = uam_gamma()

    def check(self) -> None:
        check_layers_text(self.update_layers, "update_layers")


def unlearn(adapter, task: UnlearnTask, settings: RMUSettings, ctx: RunContext) -> Edit:
    started = time.perf_counter()
    # 1. data: forget and retain text, cut to max_tokens
    forget = [TextPool(adapter, [d], "forget") for d in task.forget]
    retain = TextPool(adapter, task.retain, "retain")
    layers = parse_layers(settings.update_layers, adapter.num_layers(), "update_layers")
    if not 0 <= settings.layer < adapter.num_layers():
        raise InputError(f"layer {settings.layer} does not exist: this model has layers 0..{adapter.num_layers() - 1}.")
    # 2. trainable copies of W_out in the update layers; the frozen model is the base itself
    params = adapter.trainable(adapter.parameter_names("mlp_out", layers))
    # 3. the fixed random target c u
    g = torch.Generator().manual_seed(task.seed)
    u = torch.rand(adapter.model.config.hidden_size, generator=g)
    target = (settings.steering * u / u.norm()).to(adapter.device)  # (D,)

    def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return adapter.batch([adapter.encode(t)[: settings.max_tokens] for t in texts])

    def loss_fn(step: int) -> Objective:
        # 4. this step's batches: the forget domains take turns
        x_f, m_f = encode(forget[step % len(forget)].batch(settings.batch_size, g))
        x_r, m_r = encode(retain.batch(settings.batch_size, g))
        with torch.no_grad():
            h0_r = adapter.hidden(x_r, m_r, settings.layer)  # h^(l)_0(x_r): the frozen model's
        extra: dict[str, float] = {}

        def forget_loss() -> torch.Tensor:  # L_f
            loss = masked_mse(adapter.hidden(x_f, m_f, settings.layer, params), target, m_f)
            extra["forget_loss"] = loss.item()
            return loss

        def retain_loss() -> torch.Tensor:  # L_r
            loss = masked_mse(adapter.hidden(x_r, m_r, settings.layer, params), h0_r, m_r)
            extra["retain_loss"] = loss.item()
            return settings.alpha * loss

        return Objective(forget_loss, retain_loss, extra)

    log = optimise_params(list(params.values()), loss_fn, iterations=settings.iterations, lr=settings.lr, ctx=ctx,
                          method="RMU", optimizer="adamw", weight_decay=0.01, uam=uam_config(settings))
    return lm_edit(adapter, params, method="rmu", settings=settings, log=log, started=started)
