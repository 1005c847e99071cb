"""Novel-view family (Zero123 / Zero123-XL and the shapes-3d twin): the adapter every method and the
comparison engine talk to.

A *concept* of this family is an input view: a twin object by name ("blue pyramid", drawn by the renderer
in ``unlearning.datasets.render3d`` at the input polar angle, for any Zero123 model) or an image file
(a local launch's own files, or an upload the app staged with ``unlearning.images.stage_upload``).
Its *condition* pairs that view with a relative camera pose (``unlearning.models.zero123``):

    c = (cc_projection([CLIP(I), T]), VAE(I).mode())       T = [d_polar (rad), sin d_az, cos d_az, d_radius]

The model space is Zero123's latent space (decode divides by the VAE's scaling factor). Sampling is the
shared DDIM loop of :class:`FamilyAdapter` with Zero123's guidance (the unconditional branch zeroes both the
token and the concat latent), or the skipping sampler of :mod:`unlearning.models.view_sampling`. Twin objects
have ground-truth renders at every pose; uploads have none. The evaluator (shapes-3d only) has a shape and a
colour head; a view "shows" an object when its shape head names the object's shape.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from ..datasets import render3d as r3d
from ..errors import InputError
from .base import FamilyAdapter, SamplingDefaults, read_twin
from .view_sampling import SkipPlan, plan_skipping, run_trajectories
from .zero123 import Condition, Zero123, load_image, pose_vector

DEFAULT_POLAR = 75.0  # degrees from the up axis of the input views (90 = level with the object)
COMPARISON_AZIMUTHS = [float(a) for a in range(0, 360, 45)]  # the views each input is seen from in a comparison
DEFAULT_REMAIN = ["red sphere", "green cylinder", "orange torus"]  # kept when the user names none
BLANK = "blank background"  # the override of an erasure (skip3d's target "background")


def object_from_name(name: str) -> r3d.Object3D:
    """"blue pyramid" -> Object3D; a clear error listing the choices otherwise."""
    words = (name or "").strip().lower().split()
    if len(words) != 2:
        raise InputError(f"'{name}' is not an object of the renderer: write '<colour> <shape>', e.g. 'blue pyramid'; colours "
                         f"{', '.join(r3d.COLOURS)}, shapes {', '.join(r3d.SHAPES)}" + _image_hint() + ".")
    try:
        return r3d.Object3D(words[1], words[0])
    except ValueError as exc:
        raise InputError(f"'{name}': {exc}.") from None


def _image_hint() -> str:
    from ..hosting.profile import get_profile

    return "; or the path of an image file" if get_profile().allow_local_models else "; or upload an image in the Zero123 tab"


def is_image_concept(concept: str) -> bool:
    """Whether a validated concept is an image file (else a renderer object name)."""
    return "/" in concept or "\\" in concept


def concept_label(concept: str) -> str:
    """What a table shows for a concept: the object's name, or 'image <file name>'."""
    return f"image {Path(concept).name}" if is_image_concept(concept) else concept


class NovelViewAdapter(FamilyAdapter):
    family = "novel-view"

    def __init__(self, path: str | Path, device: torch.device, dtype: torch.dtype = torch.float32):
        super().__init__(str(path), device, dtype)
        self.pipe = Zero123.from_pretrained(path, dtype=dtype)
        for m in (self.pipe.vae, self.pipe.image_encoder, self.pipe.unet, self.pipe.cc_projection):
            m.to(device)
        self.unet = self.pipe.unet
        self.noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)
        folder = Path(str(path))
        self.twin = read_twin(folder) if folder.is_dir() else {}
        self.sampling = SamplingDefaults.from_twin(self.twin, self.family)
        self.evaluator = None
        if folder.is_dir() and (folder / "evaluator" / "config.json").is_file():
            from .evaluator import ImageClassifier

            self.evaluator = ImageClassifier.from_pretrained(folder, subfolder="evaluator", use_safetensors=True).float().to(device).eval()
            self.evaluator.requires_grad_(False)

    # ---- concepts: input views ------------------------------------------------------------------
    def concepts(self) -> list[str]:
        """Every object the renderer draws ("<colour> <shape>"); images are concepts too."""
        return [o.name for o in r3d.all_objects()]

    def validate_concept(self, concept: str) -> str:
        """A renderer object's canonical name, or the resolved path of an image file this launch may read
        (any file on the local profile; on a hosted one only uploads the app staged). A hosted profile answers
        every other text alike, so nothing is learnt about the server's disk."""
        from ..hosting.profile import get_profile
        from ..images import is_staged_upload

        text = " ".join(str(concept or "").split())
        if not text:
            raise InputError("the object is empty: name one ('blue pyramid') or give an image.")
        path = Path(text).expanduser()
        if is_staged_upload(path) or (get_profile().allow_local_models and path.is_file()):
            return str(path.resolve())
        if get_profile().allow_local_models and (is_image_concept(text) or path.suffix):
            raise InputError(f"no image file at '{text}'; give the path of an image, or an object such as 'blue pyramid'.")
        return object_from_name(text).name

    def default_retain(self, forget: Sequence[str]) -> list[str]:
        """Three objects whose views must stay as they were (the forgotten ones left out)."""
        return [c for c in DEFAULT_REMAIN if c not in forget]

    def input_view(self, concept: str, polar: float = DEFAULT_POLAR) -> tuple[torch.Tensor, list[str]]:
        """The input view of a concept as (1, 3, H, W) in [0, 1] at the model's size, and notes on what was done to
        an image (composited, padded, resized). ``BLANK`` is a white image (the override of an erasure)."""
        size = self.image_size
        if concept == BLANK:
            return torch.ones(1, 3, size, size), []
        if is_image_concept(concept):
            return load_image(concept, size)
        view = r3d.render(object_from_name(concept), polar, 0.0, size=size)
        return torch.from_numpy(view).permute(2, 0, 1)[None].float() / 255.0, []

    def ground_truth(self, concept: str, polar: float, azimuths: Sequence[float]) -> torch.Tensor | None:
        """Renders (n, 3, H, W) in [0, 1] of a renderer object at the input polar and each delta azimuth (the input
        view is at azimuth 0); None for an image (no ground truth exists)."""
        if concept == BLANK:
            return torch.ones(len(azimuths), 3, self.image_size, self.image_size)
        if is_image_concept(concept):
            return None
        obj = object_from_name(concept)
        views = np.stack([r3d.render(obj, polar, a, size=self.image_size) for a in azimuths])
        return torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255.0

    def check_polar(self, polar: float | None) -> float:
        """The input views' polar angle (default 75); refused outside the range the renderer and twin cover."""
        if polar is None:
            return DEFAULT_POLAR
        lo, hi = r3d.POLAR_RANGE
        if not lo <= float(polar) <= hi:
            raise InputError(f"input polar angle {float(polar):g} is outside the supported {lo:g}-{hi:g} degrees (90 = level with the object).")
        return float(polar)

    def shape_of(self, concept: str) -> str:
        """An object's shape word ("pyramid" of "blue pyramid"); an image concept as it is (no shape is known)."""
        return concept if is_image_concept(concept) else object_from_name(concept).shape

    @torch.no_grad()
    def recognises(self, targets: Sequence[str], images: torch.Tensor) -> torch.Tensor | None:
        """Whether the evaluator names every word of each target with its head for that word: "pyramid" by the
        shape head, "blue pyramid" by the shape and the colour heads. None without an evaluator or for an image
        target (nothing is known to look for)."""
        if self.evaluator is None or any(is_image_concept(t) for t in targets):
            return None
        heads = dict(self.evaluator.head_classes())
        preds = {k: v.argmax(1).cpu() for k, v in self.evaluator.head_logits(images.to(self.evaluator.device)).items()}
        hits = torch.ones(len(targets), dtype=torch.bool)
        for i, target in enumerate(targets):
            for word in target.split():
                head = "shape" if word in r3d.SHAPES else "colour" if word in r3d.COLOURS else None
                if head is None:
                    raise InputError(f"the evaluator has no class '{word}' (of '{target}').")
                hits[i] &= bool(preds[head][i] == heads[head].index(word))
        return hits

    def comparison_azimuths(self) -> list[float]:
        """The delta azimuths each input is seen from in a comparison (the comparison engine's view plan)."""
        return list(COMPARISON_AZIMUTHS)

    # ---- conditions -------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.pipe.image_size

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.pipe.latent_shape

    def encode_images(self, images01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLIP image embeddings (B, d), unscaled VAE posterior modes (B, 4, h, w)) of input views in [0, 1]."""
        return self.pipe.encode_images(images01)

    def condition(self, embeds: torch.Tensor, latents: torch.Tensor, pose: torch.Tensor) -> Condition:
        return self.pipe.condition(embeds, latents, pose)

    def view_condition(self, image01: torch.Tensor, azimuths: Sequence[float], delta_polar: float = 0.0) -> Condition:
        """One input view seen from each delta azimuth: a Condition of len(azimuths) rows."""
        embeds, latents = self.encode_images(image01)
        return self.condition(embeds, latents, pose_vector(delta_polar, list(azimuths)))

    def encode(self, concepts: Sequence[str], azimuths: Sequence[float] | None = None,
               input_polar: float | None = DEFAULT_POLAR) -> Condition:
        """Conditions for (input view, delta azimuth) rows, one per concept (azimuth 0 when none are given); each
        distinct input is encoded once."""
        azimuths = list(azimuths) if azimuths is not None else [0.0] * len(concepts)
        polar = DEFAULT_POLAR if input_polar is None else input_polar
        rows: list[Condition | None] = [None] * len(concepts)
        for concept in dict.fromkeys(concepts):
            idx = [i for i, c in enumerate(concepts) if c == concept]
            cond = self.view_condition(self.input_view(concept, polar)[0], [azimuths[i] for i in idx])
            for j, i in enumerate(idx):
                rows[i] = cond.index(slice(j, j + 1))
        return Condition.cat(rows)

    def null_condition(self, batch_size: int) -> Condition:
        """Zero123's unconditional branch: a zero token and a zero concat latent."""
        c, h, w = self.latent_shape
        d = self.pipe.cc_projection.config.out_channel
        return Condition(torch.zeros(batch_size, 1, d, device=self.device), torch.zeros(batch_size, c, h, w, device=self.device))

    # ---- noise prediction and sampling ----------------------------------------------------------
    def eps(self, unet, x_t: torch.Tensor, t, cond: Condition) -> torch.Tensor:
        return self.pipe.eps(unet, x_t, t, cond, 1.0)

    def guided_eps(self, unet, x_t, t, cond: Condition, guidance_scale: float) -> torch.Tensor:
        return self.pipe.eps(unet, x_t, t, cond, guidance_scale)

    def x0_prediction(self, unet, x: torch.Tensor, t, cond: Condition) -> torch.Tensor:
        """D(x_t; c) = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), conditional (no guidance)."""
        a = self.pipe.scheduler.alphas_cumprod.to(x.device)[torch.as_tensor(t, device=x.device).long()].float()
        a = a.reshape(-1, *[1] * (x.dim() - 1)) if a.dim() else a
        eps = unet(torch.cat([x, cond.latent], 1), t, encoder_hidden_states=cond.token).sample
        return (x - (1 - a).sqrt() * eps) / a.sqrt()

    def ddim_scheduler(self, steps: int) -> DDIMScheduler:
        """A fresh DDIM scheduler of the checkpoint's own config with ``steps`` timesteps."""
        sched = DDIMScheduler.from_config(self.pipe.scheduler.config)
        sched.set_timesteps(steps)
        return sched

    def sampler_config(self):
        return self.pipe.scheduler.config

    def sample_shape(self) -> tuple[int, int, int]:
        return self.latent_shape

    def to_images(self, x0: torch.Tensor) -> torch.Tensor:
        return self.pipe.decode(x0)

    @torch.no_grad()
    def generate(self, concepts: Sequence[str], seeds: Sequence[int], *, unet=None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, sampler: str | None = None, azimuths: Sequence[float] | None = None,
                 input_polar: float | None = DEFAULT_POLAR) -> torch.Tensor:
        """Views in [0, 1], one per (input, seed, delta azimuth) row; each row starts from its seed's noise."""
        if len(concepts) != len(seeds):
            raise ValueError("generate() needs one seed per concept")
        cond = self.encode(concepts, azimuths, input_polar)
        cond = Condition(cond.token.to(self.dtype), cond.latent.to(self.dtype))
        x_0 = self.denoise(self.initial_noise(seeds), cond, unet=unet, num_inference_steps=num_inference_steps,
                           guidance_scale=guidance_scale, sampler=sampler)
        return self.to_images(x_0)

    @torch.no_grad()
    def sample_views(self, unet, image01: torch.Tensor, azimuths: Sequence[float], *, steps: int, guidance: float, seed: int = 0,
                     plan: SkipPlan | None = None) -> tuple[torch.Tensor, dict]:
        """Views of one input at the delta azimuths from one shared noise, with the skipping sampler (``plan``;
        None: every view runs all steps). Returns (images, {"unet_evals", "seconds"})."""
        cond = self.view_condition(image01, azimuths)
        noise = torch.randn((1, *self.latent_shape), generator=torch.Generator().manual_seed(seed)).to(self.device, self.dtype)
        t0 = time.perf_counter()
        lat, info = run_trajectories(self, unet, Condition(cond.token.to(self.dtype), cond.latent.to(self.dtype)), steps=steps,
                                     guidance=guidance, noise=noise, plan=plan)
        images = self.to_images(lat)
        info["seconds"] = time.perf_counter() - t0  # trajectories and decoding
        return images, info

    def skip_plan(self, image01: torch.Tensor, azimuths: Sequence[float], **rule) -> SkipPlan:
        """Algorithm 1's plan for one input's views (``rule``: n_ref, skip, dynamic, skip_near, skip_far, tau)."""
        return plan_skipping(list(azimuths), self.view_condition(image01, azimuths).token, **rule)

    # ---- data (data-free methods) -------------------------------------------------------------
    def concept_data(self, concept: str, n: int, seed: int) -> torch.Tensor:
        """x_0 (scaled VAE latents) of n views of the concept around it: renders for an object, the original
        model's own views for an image."""
        azimuths = [360.0 * i / n for i in range(n)]
        images = self.ground_truth(concept, DEFAULT_POLAR, azimuths)
        if images is None:
            images = self.generate([concept] * n, [seed] * n, azimuths=azimuths)
        with torch.no_grad():
            latents = self.pipe.vae.encode(images.to(self.device, self.pipe.vae.dtype) * 2 - 1).latent_dist.mode()
        return latents * self.pipe.vae.config.scaling_factor

    def with_unet(self, unet) -> Zero123:
        """The pipeline's components with another UNet (for saving an unlearned model in Zero123's layout)."""
        p = self.pipe
        return Zero123(vae=p.vae, image_encoder=p.image_encoder, feature_extractor=p.feature_extractor, unet=unet,
                       scheduler=p.scheduler, cc_projection=p.cc_projection)

    def describe(self) -> dict:
        return {**super().describe(), "image_size": self.image_size}
