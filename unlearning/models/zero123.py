"""Zero123 (novel-view synthesis) written on diffusers classes: there is no core diffusers Zero123 class.

Components (the layout of ``kxic/zero123-165000`` / ``kxic/zero123-xl`` and of the shapes-3d twin):

    vae                AutoencoderKL
    image_encoder      CLIPVisionModelWithProjection  (its ``image_embeds``: 768-d for the real model)
    feature_extractor  CLIPImageProcessor             (resize / crop / normalise for the image encoder)
    unet               UNet2DConditionModel with 8 input channels
    scheduler          DDIMScheduler
    cc_projection      CCProjection: one Linear (d + 4 -> d)

Conditioning on an input view I and a relative camera pose:

    pose  T = [delta_polar (radians), sin(delta_azimuth), cos(delta_azimuth), delta_radius]
    token c = cc_projection([CLIP(I), T])                      the single cross-attention token
    concat z_I = VAE(I).mode()   (posterior mode, NOT multiplied by the scaling factor)
    eps = unet(concat([x_t, z_I], channels), t, c)
    classifier-free guidance: the unconditional branch zeroes both c and z_I.

Azimuth convention. Deltas are target minus input, in the renderer's convention
(unlearning/datasets/render3d.py): azimuth grows counter-clockwise seen from above, so a positive
delta azimuth moves the camera to the right around the object and the object appears to turn left.
Zero123's own data uses this sense for its delta azimuth ("opposite to NeRF"), so a delta given here
is passed to the real model unchanged. Polar angles are measured from the up axis (90 = level).

Real checkpoints ship ``cc_projection`` as a module of a community pipeline file; it is rebuilt here
(same parameter names: ``projection.weight`` / ``projection.bias``) rather than importing remote code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from PIL import Image
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from ..atomic import atomic_dir
from ..errors import InputError

PIPELINE_CLASS = "Zero1to3StableDiffusionPipeline"  # the class name in the real checkpoints' model_index.json


class CCProjection(ModelMixin, ConfigMixin):
    """Linear map from [CLIP image embedding (d), pose (4)] to the d-wide cross-attention token."""

    @register_to_config
    def __init__(self, in_channel: int = 772, out_channel: int = 768):
        super().__init__()
        self.projection = nn.Linear(in_channel, out_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)


def pose_vector(delta_polar_deg, delta_azimuth_deg, delta_radius=0.0) -> torch.Tensor:
    """(B, 4) [delta_polar (rad), sin(delta_az), cos(delta_az), delta_radius] from degrees (scalars or sequences)."""
    dp = torch.as_tensor(np.radians(np.atleast_1d(np.asarray(delta_polar_deg, dtype=np.float64))))
    da = torch.as_tensor(np.radians(np.atleast_1d(np.asarray(delta_azimuth_deg, dtype=np.float64))))
    dr = torch.as_tensor(np.atleast_1d(np.asarray(delta_radius, dtype=np.float64)))
    dp, da, dr = torch.broadcast_tensors(dp, da, dr)
    return torch.stack([dp, torch.sin(da), torch.cos(da), dr], -1).float()


@dataclass
class Condition:
    """The model's two conditioning inputs for a batch: cross-attention token and concat latent."""

    token: torch.Tensor  # (B, 1, d)
    latent: torch.Tensor  # (B, 4, h, w)

    def __len__(self) -> int:
        return len(self.token)

    def index(self, idx) -> Condition:
        return Condition(self.token[idx], self.latent[idx])

    @staticmethod
    def cat(conds: list[Condition]) -> Condition:
        return Condition(torch.cat([c.token for c in conds]), torch.cat([c.latent for c in conds]))


class Zero123:
    """The pipeline: load / save in the real layout, encode conditions, denoise with CFG and DDIM."""

    def __init__(self, vae: AutoencoderKL, image_encoder: CLIPVisionModelWithProjection, feature_extractor: CLIPImageProcessor,
                 unet: UNet2DConditionModel, scheduler: DDIMScheduler, cc_projection: CCProjection):
        if unet.config.in_channels != 2 * vae.config.latent_channels:
            raise InputError(f"a Zero123 UNet takes {2 * vae.config.latent_channels} input channels (noisy latent + input-view "
                             f"latent), this one takes {unet.config.in_channels}.")
        self.vae, self.image_encoder, self.feature_extractor = vae, image_encoder, feature_extractor
        self.unet, self.scheduler, self.cc_projection = unet, scheduler, cc_projection

    # ---- loading and saving ----
    @classmethod
    def from_pretrained(cls, where: str | Path, *, dtype: torch.dtype = torch.float32, local_files_only: bool = False) -> Zero123:
        """A folder or hub id of the real layout. Weights load from safetensors where present; diffusers /
        transformers fall back to ``.bin`` files with torch's weights-only loader (no code execution)."""
        kw = {"local_files_only": local_files_only}
        try:
            parts = dict(
                vae=AutoencoderKL.from_pretrained(where, subfolder="vae", dtype=dtype, **kw),
                image_encoder=CLIPVisionModelWithProjection.from_pretrained(where, subfolder="image_encoder", dtype=dtype, **kw),
                feature_extractor=CLIPImageProcessor.from_pretrained(where, subfolder="feature_extractor", **kw),
                unet=UNet2DConditionModel.from_pretrained(where, subfolder="unet", dtype=dtype, **kw),
                scheduler=DDIMScheduler.from_pretrained(where, subfolder="scheduler", **kw),
                cc_projection=CCProjection.from_pretrained(where, subfolder="cc_projection", dtype=dtype, **kw),
            )
        except (OSError, ValueError) as exc:
            raise InputError(f"'{where}' is not a loadable Zero123 model (vae, image_encoder, feature_extractor, unet, scheduler, "
                             f"cc_projection): {str(exc).splitlines()[0]}") from None
        for module in (parts["vae"], parts["image_encoder"], parts["unet"], parts["cc_projection"]):
            module.eval().requires_grad_(False)
        return cls(**parts)

    def save_pretrained(self, out: str | Path, extra_index: dict | None = None) -> None:
        """Write the real checkpoints' layout atomically (a temp folder renamed into place, replacing ``out``)."""
        with atomic_dir(out, replace=True) as tmp:
            for name in ("vae", "image_encoder", "unet", "cc_projection"):
                getattr(self, name).save_pretrained(tmp / name, safe_serialization=True)
            self.feature_extractor.save_pretrained(tmp / "feature_extractor")
            self.scheduler.save_pretrained(tmp / "scheduler")
            index = {
                "_class_name": PIPELINE_CLASS,
                "_unlearning_family": "zero123",
                "vae": ["diffusers", "AutoencoderKL"],
                "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
                "feature_extractor": ["transformers", "CLIPImageProcessor"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "scheduler": ["diffusers", "DDIMScheduler"],
                "cc_projection": ["pipeline_zero1to3", "CCProjection"],
                **(extra_index or {}),
            }
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    # ---- properties ----
    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def image_size(self) -> int:
        return int(self.vae.config.sample_size)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        down = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (self.vae.config.latent_channels, self.image_size // down, self.image_size // down)

    # ---- conditioning ----
    @torch.no_grad()
    def encode_images(self, images01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLIP image embeddings (B, d), VAE posterior-mode latents (B, 4, h, w), unscaled) for images in [0, 1]."""
        pixels = self.feature_extractor(images=images01.float().cpu(), do_rescale=False, return_tensors="pt").pixel_values
        embeds = self.image_encoder(pixel_values=pixels.to(self.device, self.dtype)).image_embeds
        latents = self.vae.encode(images01.to(self.device, self.vae.dtype) * 2 - 1).latent_dist.mode()
        return embeds, latents

    def condition(self, embeds: torch.Tensor, latents: torch.Tensor, pose: torch.Tensor, cc_projection: CCProjection | None = None) -> Condition:
        """Condition for each (image, pose) row; ``embeds``/``latents`` broadcast over poses when they have one row."""
        n = max(len(embeds), len(pose))
        embeds, latents = embeds.expand(n, -1), latents.expand(n, -1, -1, -1)
        proj = cc_projection or self.cc_projection
        dtype = next(proj.parameters()).dtype
        pose = pose.to(embeds.device).expand(n, -1)
        token = proj(torch.cat([embeds, pose], -1).to(dtype))[:, None]
        return Condition(token.float(), latents.float())  # float32 conditions; callers cast to their UNet's dtype

    # ---- denoising ----
    def eps(self, unet: UNet2DConditionModel, x: torch.Tensor, t, cond: Condition, guidance: float) -> torch.Tensor:
        """Guided noise prediction; the unconditional branch zeroes the token and the concat latent."""
        if guidance == 1.0:
            return unet(torch.cat([x, cond.latent], 1), t, encoder_hidden_states=cond.token).sample
        zero = Condition(torch.zeros_like(cond.token), torch.zeros_like(cond.latent))
        both = Condition.cat([cond, zero])
        e = unet(torch.cat([torch.cat([x, x]), both.latent], 1), t, encoder_hidden_states=both.token).sample
        e_c, e_u = e.chunk(2)
        return e_u + guidance * (e_c - e_u)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [0, 1]."""
        with torch.no_grad():
            img = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return ((img.float().clamp(-1, 1) + 1) / 2).cpu()


def load_image(image, size: int) -> tuple[torch.Tensor, list[str]]:
    """An input view as (1, 3, size, size) in [0, 1] with Zero123's preprocessing, and notes saying what
    was done: alpha composited on white, non-square padded with white (centred), resized."""
    notes: list[str] = []
    if isinstance(image, (str, Path, bytes)):
        from ..images import load_upload

        image, notes = load_upload(image)  # size / format / pixel-count limits of the profile; modes to RGB, alpha on white
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or image.size == 0:
            raise InputError(f"the input view has shape {image.shape}; expected an H x W x 3 image.")
        image = Image.fromarray(image.astype(np.uint8))
    if not isinstance(image, Image.Image):
        raise InputError(f"the input view must be an image, got {type(image).__name__}.")
    if image.width < 8 or image.height < 8:
        raise InputError(f"the input view is {image.width}x{image.height} pixels; give at least 8x8.")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
        notes.append("transparent pixels composited on white, as Zero123 expects")
    image = image.convert("RGB")
    if image.width != image.height:
        side = max(image.size)
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        notes.append(f"{image.width}x{image.height} padded with white to a centred square")
        image = canvas
    if image.width != size:
        notes.append(f"resized from {image.width}x{image.height} to the model's {size}x{size}")
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    arr = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    return arr, notes


def wrap_degrees(angle):
    """Angle difference folded into [-180, 180)."""
    return (np.asarray(angle, dtype=float) + 180.0) % 360.0 - 180.0

