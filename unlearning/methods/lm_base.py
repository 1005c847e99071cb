"""What the language-model methods share: their text batches, the layers they train, their Edit.

A language-model method gets a :class:`~unlearning.models.causal_lm.TextModel` (the adapter), the task's
forget and retain *domains*, and returns an :class:`~unlearning.edit.Edit` of the parameters it trained.
It trains float32 copies of those parameters (``adapter.trainable``) and runs the base module with them
substituted, so the base weights are never touched and a large model is held once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..edit import Edit
from ..errors import InputError


class TextPool:
    """The texts of some domains, drawn in seeded batches (with replacement, as the WMDP code cycles its corpora)."""

    def __init__(self, adapter, domains: Sequence[str], what: str):
        self.texts = [t for d in domains for t in adapter.domain(d).corpus]
        if not self.texts:
            raise InputError(f"the {what} domain ({', '.join(domains)}) has no text to train on: give its corpus file "
                             "(see the Language model tab's data note), or pick another domain.")

    @classmethod
    def of(cls, texts: Sequence[str]) -> TextPool:
        """A pool of the given texts."""
        pool = cls.__new__(cls)
        pool.texts = list(texts)
        return pool

    def batch(self, size: int, g: torch.Generator) -> list[str]:
        return [self.texts[int(i)] for i in torch.randint(len(self.texts), (size,), generator=g)]


def parse_layers(text: str, num_layers: int, what: str = "layers") -> list[int]:
    """'5,6,7' -> [5, 6, 7], each checked against the model's depth."""
    try:
        layers = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} takes layer numbers separated by commas (e.g. 5,6,7), got '{text}'.") from None
    if not layers:
        raise InputError(f"{what} is empty; give at least one layer number.")
    if bad := [x for x in layers if not 0 <= x < num_layers]:
        raise InputError(f"{what}: layer {bad[0]} does not exist; this model has layers 0..{num_layers - 1}.")
    return sorted(set(layers))


def check_layers_text(text: str, what: str) -> None:
    """For a settings ``check()``: the layer list parses (the model's depth is checked when the run starts)."""
    parse_layers(text, 10**6, what)


def lm_edit(adapter, params: dict[str, torch.Tensor], *, method: str, settings: Any, log: list[dict], started: float) -> Edit:
    return adapter.edit_from(params, method=method, settings=dataclasses.asdict(settings), loss_log=log,
                             timings={"unlearn_s": time.perf_counter() - started},
                             base={"source": adapter.source, "family": adapter.family})
