"""Gradient ascent (GA / NegGrad) and NegGrad+ for causal language models: the baselines of WMDP-style tables.

GA raises the language-modelling loss on forget-domain text, so the model's likelihood of it drops;
NegGrad+ (Kurmanji et al. 2023, "Towards Unbounded Machine Unlearning") adds ordinary next-token training
on retain-domain text so the rest is kept. Unbounded: enough steps break the whole model.

Notation (one step):
    x_f, x_r      a batch of forget-domain and of retain-domain texts
    NLL(x)        mean next-token negative log-likelihood over the batch's real tokens
    L_f           -beta * NLL(x_f)                       (ascent on the forget text)
    L_r           alpha * NLL(x_r)                       (alpha = 0: plain GA; > 0: NegGrad+)
    loss          L_f + L_r, minimised with AdamW over the chosen weights

With ``uam`` on, the step is UAM's (``uam.py``; needs alpha > 0): the retain gradient is taken at weights
moved towards lower L_f (more forgetting) and its component along grad L_f is removed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..edit import Edit
from ..models.causal_lm import LM_PARAMETER_GROUPS
from .base import RunContext, UnlearnTask, optimise_params, setting
from .lm_base import TextPool, check_layers_text, lm_edit, parse_layers
from .uam import Objective, require_retain_loss, uam_config, uam_gamma, uam_rho, uam_switch


@dataclass
class LMGradientAscentSettings:
    iterations: int = setting(150, "steps (chosen: RMU's 150 batches, so the rows of a table train as long)", low=1,
                              high=100_000)
    lr: float = setting(5e-5, "AdamW learning rate (chosen: RMU's)", low=0.0, low_inclusive=False)
    batch_size: int = setting(4, "texts per batch, forget and retain each (chosen: RMU's)", low=1, high=512)
    forget_weight: float = setting(1.0, "beta: weight of the ascent on forget text", low=0.0, low_inclusive=False)
    retain_weight: float = setting(0.0, "alpha: weight of next-token training on retain text (0 = GA, > 0 = NegGrad+)",
                                   low=0.0)
    group: str = setting("mlp", "which weights of the chosen layers train ('all': every weight of the model)",
                         choices=(*LM_PARAMETER_GROUPS, "all"))
    update_layers: str = setting("5,6,7", "layers that train (chosen: RMU's, so GA and RMU change the same blocks)")
    max_tokens: int = setting(512, "texts are cut to this many tokens", low=2, high=8192)
    uam: bool = uam_switch()
    uam_rho: float = uam_rho()
    uam_gamma: float = uam_gamma()

    def check(self) -> None:
        check_layers_text(self.update_layers, "update_layers")
        require_retain_loss(self, self.retain_weight > 0, "set retain_weight > 0 (NegGrad+)")


def unlearn(adapter, task: UnlearnTask, settings: LMGradientAscentSettings, ctx: RunContext) -> Edit:
    started = time.perf_counter()
    # 1. data: forget text, and retain text when alpha > 0
    forget = TextPool(adapter, task.forget, "forget")
    retain = TextPool(adapter, task.retain, "retain") if settings.retain_weight > 0 else None
    # 2. trainable copies of the chosen weights
    layers = [] if settings.group == "all" else parse_layers(settings.update_layers, adapter.num_layers(), "update_layers")
    params = adapter.trainable(adapter.parameter_names(settings.group, layers))
    g = torch.Generator().manual_seed(task.seed)

    def nll(texts: list[str]) -> torch.Tensor:
        ids, mask = adapter.batch([adapter.encode(t)[: settings.max_tokens] for t in texts])
        return adapter.mean_nll(ids, mask, params)

    def loss_fn(step: int) -> Objective:
        # 3. ascend on the forget text, descend on the retain text
        x_f = forget.batch(settings.batch_size, g)
        x_r = retain.batch(settings.batch_size, g) if retain else None
        extra: dict[str, float] = {}

        def forget_loss() -> torch.Tensor:  # L_f
            loss = nll(x_f)
            extra["forget_nll"] = loss.item()
            return -settings.forget_weight * loss

        def retain_loss() -> torch.Tensor:  # L_r
            loss = nll(x_r)
            extra["retain_nll"] = loss.item()
            return settings.retain_weight * loss

        return Objective(forget_loss, retain_loss if retain else None, extra)

    name = "NegGrad+" if retain else "gradient ascent"
    log = optimise_params(list(params.values()), loss_fn, iterations=settings.iterations, lr=settings.lr, ctx=ctx,
                          method=name, optimizer="adamw", weight_decay=0.01, uam=uam_config(settings))
    return lm_edit(adapter, params, method="gradient_ascent", settings=settings, log=log, started=started)
