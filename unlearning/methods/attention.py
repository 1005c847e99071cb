"""Cross-attention maps of a UNet, for the methods whose loss lives on attention (Forget-Me-Not, MACE).

Every cross-attention layer (``attn2``) of the UNet computes, per head h,

    A_l = softmax(Q_h K_h^T / sqrt(d_h))     Q = to_q(x) (B, N, inner), K = to_k(c) (B, T, inner)

where N = h x w latent pixels of that layer and T the text tokens. A_l[b, h, n, j] is how much pixel n
reads token j. :class:`CrossAttentionMaps` records Q and K with forward hooks on ``to_q`` / ``to_k`` of
one UNet (a copy the method owns: hooks never go on the adapter's shared base model) and recomputes
A_l from them, so it works with whatever attention processor diffusers picked (SDPA does not return
its weights). The maps carry gradients to whatever produced Q and K.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def cross_attention_modules(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Name -> every cross-attention module (``...attn2``) of a UNet."""
    return {n: m for n, m in unet.named_modules() if n.endswith("attn2") and hasattr(m, "to_q")}


class CrossAttentionMaps:
    """Context manager: ``with CrossAttentionMaps(unet) as maps: unet(...); probs = maps.probabilities()``."""

    def __init__(self, unet: torch.nn.Module):
        self.layers = cross_attention_modules(unet)
        self._q: dict[str, torch.Tensor] = {}
        self._k: dict[str, torch.Tensor] = {}
        self._hooks: list = []

    def __enter__(self) -> CrossAttentionMaps:
        for name, attn in self.layers.items():
            self._hooks.append(attn.to_q.register_forward_hook(lambda _m, _i, out, n=name: self._q.__setitem__(n, out)))
            self._hooks.append(attn.to_k.register_forward_hook(lambda _m, _i, out, n=name: self._k.__setitem__(n, out)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self.clear()

    def clear(self) -> None:
        self._q.clear()
        self._k.clear()

    def probabilities(self) -> list[torch.Tensor]:
        """A_l for every layer seen since the last ``clear``: each (B, heads, N, T), rows summing to 1."""
        out = []
        for name, attn in self.layers.items():
            if name not in self._q:
                continue
            q, k = self._q[name], self._k[name]  # (B, N, inner), (B, T, inner)
            b, heads = q.shape[0], attn.heads
            d = q.shape[-1] // heads
            q = q.view(b, -1, heads, d).transpose(1, 2)  # (B, heads, N, d)
            k = k.view(b, -1, heads, d).transpose(1, 2)  # (B, heads, T, d)
            out.append(torch.softmax(q.float() @ k.float().transpose(-1, -2) * d**-0.5, dim=-1))  # (B, heads, N, T)
        return out


def concept_attention(probs: Sequence[torch.Tensor], positions: Sequence[Sequence[int]],
                      masks: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per layer, the attention the masked pixels pay to each sample's concept tokens, as a flat vector.

    ``positions[b]``: token positions of sample b's concept; ``masks`` (B, 1, H, W) in [0, 1]: where the
    concept is in the image (resized to each layer's h x w, nearest, kept where > 0.5 as MACE does; a
    sample whose mask misses every pixel of a layer keeps all of them); None: every pixel.
    """
    out = []
    for a in probs:  # (B, heads, N, T)
        side = int(round(a.shape[2] ** 0.5))
        keep = None
        if masks is not None:
            keep = F.interpolate(masks.float().to(a.device), size=(side, side), mode="nearest").flatten(1) > 0.5  # (B, N)
            keep |= ~keep.any(1, keepdim=True)
        parts = []
        for b, pos in enumerate(positions):
            sel = a[b][:, :, list(pos)]  # (heads, N, P)
            parts.append((sel[:, keep[b]] if keep is not None else sel).flatten())
        out.append(torch.cat(parts))
    return out
