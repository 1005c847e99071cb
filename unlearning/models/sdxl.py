"""Stable Diffusion XL family: ``stabilityai/stable-diffusion-xl-base-1.0`` (or a folder of its layout).

Loaded through diffusers' ``StableDiffusionXLPipeline.from_pretrained`` (safetensors only, no watermarker,
never remote code); sampling uses the shared DDIM / DPM-Solver loop of :class:`FamilyAdapter`, as for SD.
What differs from SD 1.x / 2.x is the conditioning (Podell et al. 2023, Sec. 2.1 and 2.2):

    two text encoders   CLIP ViT-L/14 (768) and OpenCLIP ViT-bigG/14 (1280); each one's penultimate hidden
                        states, concatenated: encoder hidden states h (B, 77, 2048)
    pooled embedding    the bigG encoder's projected EOS embedding p (B, 1280)
    time ids            (original size, crop top-left, target size) = (H, W, 0, 0, H, W) at the adapter's
                        resolution; with p they form the UNet's added embedding ("text_time")
    null condition      zeros for h and p (``force_zeros_for_empty_prompt``, as the pipeline does for CFG)

So that every method can index, concatenate and expand conditions like any other family's (B, T, D)
tensors, a condition here is one tensor (B, 77 + 1, 2048): h, then p as a last row zero-padded to 2048.
:meth:`eps` unpacks it; :meth:`context` gives h alone (what the cross-attention layers and the closed-form
editors read). ``token_embeddings(None, ...)`` are the empty prompt's, the anchor UCE uses for erasure.

The VAE overflows in float16 (its config says ``force_upcast``): in a float16 adapter it stays float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline

from .sd import StableDiffusionAdapter


class StableDiffusionXLAdapter(StableDiffusionAdapter):
    family = "stable-diffusion-xl"
    text_parts = ("text_encoder", "text_encoder_2")

    def __init__(self, path: str | Path, device: torch.device, dtype: torch.dtype = torch.float32, resolution: int | None = None):
        super().__init__(path, device, dtype, resolution)
        if self.vae.dtype == torch.float16 and self.vae.config.get("force_upcast", False):
            self.vae = self.vae.float()  # this adapter's own VAE, kept in float32 (the pipeline upcasts it per call)
        self.pooled_dim = self.text_encoder_2.config.projection_dim
        self.width = self.unet.config.cross_attention_dim
        if self.text_encoder.config.hidden_size + self.text_encoder_2.config.hidden_size != self.width:
            raise ValueError(f"the two text encoders give {self.text_encoder.config.hidden_size} + "
                             f"{self.text_encoder_2.config.hidden_size} features, the UNet reads {self.width}")
        if self.pooled_dim > self.width:
            raise ValueError(f"the pooled embedding ({self.pooled_dim}) is wider than the condition rows ({self.width})")

    def load_pipeline(self, path: str | Path, dtype: torch.dtype):
        pipe = StableDiffusionXLPipeline.from_pretrained(str(path), dtype=dtype, use_safetensors=True, add_watermarker=False)
        self.tokenizer_2 = pipe.tokenizer_2
        self.force_zeros_for_empty_prompt = bool(pipe.config.get("force_zeros_for_empty_prompt", True))
        return pipe

    def pipeline(self, unet: torch.nn.Module | None = None):
        return StableDiffusionXLPipeline(vae=self.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2,
                                         tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_2, unet=unet or self.unet,
                                         scheduler=self.pipeline_scheduler, add_watermarker=False,
                                         force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt)

    # ---- conditions -----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, concepts: Sequence[str]) -> torch.Tensor:
        """(B, 78, 2048): both encoders' penultimate hidden states side by side, then the pooled embedding."""
        hidden, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(list(concepts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids.to(self.device)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # (B, 77, 768) then (B, 77, 1280)
            pooled = out[0] if out[0].ndim == 2 else pooled  # the projected EOS embedding of the encoder that has one
        return self.pack(torch.cat(hidden, -1), pooled).to(self.dtype)

    def pack(self, hidden: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """(B, T, D) hidden states and (B, P) pooled -> one (B, T + 1, D) condition."""
        row = torch.zeros(hidden.shape[0], 1, hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
        row[:, 0, : pooled.shape[-1]] = pooled.to(hidden.dtype)
        return torch.cat([hidden, row], 1)

    def context(self, cond: torch.Tensor) -> torch.Tensor:
        return cond[:, :-1]

    def pooled(self, cond: torch.Tensor) -> torch.Tensor:
        return cond[:, -1, : self.pooled_dim]

    def null_condition(self, batch_size: int) -> torch.Tensor:
        if self._null is None:
            if self.force_zeros_for_empty_prompt:
                self._null = torch.zeros(1, self.tokenizer.model_max_length + 1, self.width, dtype=self.dtype, device=self.device)
            else:
                self._null = self.encode([""])
        return self._null.expand(batch_size, -1, -1)

    @torch.no_grad()
    def token_embeddings(self, text: str | None, positions: Sequence[int]) -> torch.Tensor:
        """Rows of ``text``'s hidden states; None: the empty prompt's (the CFG null condition is all zeros here)."""
        return self.context(self.encode(["" if text is None else text]))[0, list(positions)].float()

    def time_ids(self, batch_size: int, dtype: torch.dtype) -> torch.Tensor:
        """(B, 6): original size, crop top-left, target size, all at the adapter's resolution."""
        side = float(self.resolution)
        return torch.tensor([[side, side, 0.0, 0.0, side, side]], dtype=dtype, device=self.device).expand(batch_size, -1)

    # ---- noise prediction -------------------------------------------------------------------------
    def eps(self, unet, x_t: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor) -> torch.Tensor:
        dtype = next(unet.parameters()).dtype
        added = {"text_embeds": self.pooled(cond).to(dtype), "time_ids": self.time_ids(x_t.shape[0], dtype)}
        return unet(x_t.to(dtype), t, encoder_hidden_states=self.context(cond).to(dtype), added_cond_kwargs=added).sample
