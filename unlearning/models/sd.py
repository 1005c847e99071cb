"""Stable Diffusion family: real SD 1.x / 2.x from the hub or a local folder, and the shapes-sd twin.

Everything loads through diffusers' ``StableDiffusionPipeline.from_pretrained`` (safetensors only, no
safety checker, never remote code), so the twin in ``assets/shapes-sd`` exercises exactly the code
path a hub snapshot takes. The pipeline object is kept only as a bag of components; sampling uses
the shared DDIM / DPM-Solver loop of :class:`FamilyAdapter`, so the original and the edited UNet go
through the same code.

Model space: VAE latents x_0 = scaling_factor * E(image) (4 channels, 1/8 of the image side for real
SD, 1/2 for the twin). Conditions: the text encoder's per-token outputs (B, 77, 768) for SD 1.x.

Concepts are free text. A model folder's twin.json may declare a *vocabulary* (the twin does:
shapes are objects, colours are attributes); it drives the default prompt sets and the evaluator's
recognition of a concept in an image. Without one (real SD), prompts come from generic templates
and forget / retain scores need CLIP weights on disk (``unlearning.metrics.clip``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline

from ..errors import InputError
from .base import FamilyAdapter, SamplingDefaults, read_twin, vocabulary_words

# Retained prompts for a model without a vocabulary: everyday subjects and styles (COCO-like).
GENERIC_RETAIN = [
    "a photo of a dog", "a photo of a cat", "a red car on a street", "a bowl of fruit on a table",
    "a mountain landscape at sunset", "a portrait of a woman", "a city skyline at night", "a painting of flowers",
]
GENERIC_ALTERNATIVES = ["an object", "a person", "an animal", "a landscape", "a building", "a painting", "a texture"]
GENERIC_FORGET_TEMPLATES = ["{}", "a photo of {}", "a painting of {}", "an image of {}"]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


class StableDiffusionAdapter(FamilyAdapter):
    family = "stable-diffusion"

    def __init__(self, path: str | Path, device: torch.device, dtype: torch.dtype = torch.float32):
        super().__init__(str(path), device, dtype)
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()  # the app shows its own progress; keep logs readable
        transformers_logging.disable_progress_bar()
        pipe = StableDiffusionPipeline.from_pretrained(
            str(path), dtype=dtype, use_safetensors=True, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
        self.unet = pipe.unet.to(device).eval()
        self.vae = pipe.vae.to(device).eval()
        self.text_encoder = pipe.text_encoder.to(device).eval()
        self.tokenizer = pipe.tokenizer
        self.pipeline_scheduler = pipe.scheduler  # the checkpoint's own scheduler (exports keep it)
        self.pipeline_scheduler_config = pipe.scheduler.config
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        for module in (self.unet, self.vae, self.text_encoder):
            for p in module.parameters():
                p.requires_grad_(False)
        self.twin = read_twin(Path(path)) if Path(str(path)).is_dir() else {}
        self.sampling = SamplingDefaults.from_twin(self.twin, self.family)
        self.vocabulary: dict[str, list[str]] = self.twin.get("vocabulary", {})
        self.evaluator = None
        folder = Path(str(path))
        if folder.is_dir() and (folder / "evaluator").exists():
            from .evaluator import ImageClassifier

            self.evaluator = ImageClassifier.from_pretrained(folder, subfolder="evaluator", use_safetensors=True).to(device).eval()
            for p in self.evaluator.parameters():
                p.requires_grad_(False)
        self._null: torch.Tensor | None = None

    # ---- sampling --------------------------------------------------------------------------------
    def sampler_config(self):
        return self.pipeline_scheduler_config  # the checkpoint's own betas and spacing

    def sample_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        return (self.unet.config.in_channels, size, size)

    @torch.no_grad()
    def to_images(self, x0: torch.Tensor) -> torch.Tensor:
        images = []
        for chunk in x0.split(8):  # real SD's VAE decoder is memory hungry at 512 px
            decoded = self.vae.decode(chunk.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
            images.append(((decoded.float().clamp(-1, 1) + 1) / 2).cpu())
        return torch.cat(images)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, 3, H, W) -> latents x_0 (posterior mean, scaled)."""
        x = (images.to(self.device, self.vae.dtype) * 2 - 1)
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    # ---- concepts and conditions ---------------------------------------------------------------
    def concepts(self) -> list[str]:
        """Suggested concepts: the twin's vocabulary (objects, then attributes, then styles); [] for real SD."""
        return vocabulary_words(self.vocabulary)

    def kind_of(self, concept: str) -> str | None:
        for kind, words in self.vocabulary.items():
            if concept in words:
                return kind
        return None

    def token_count(self, text: str) -> int:
        return len(self.tokenizer(text, truncation=False).input_ids)

    def validate_concept(self, concept: str) -> str:
        text = " ".join(str(concept).split()).lower()  # CLIP's tokenizer lower-cases anyway
        if not text:
            raise InputError("the concept is empty: type what to erase, e.g. " + (", ".join(self.concepts()[:3]) or "'Van Gogh', 'a dog'") + ".")
        if not re.search(r"[^\W_]", text):
            raise InputError(f"'{text}' has no letters or digits; type a word or phrase to erase.")
        n, limit = self.token_count(text), self.tokenizer.model_max_length
        if n > limit:
            raise InputError(f"'{text[:60]}' is {n} tokens long; this model's text encoder reads at most {limit} (start and end included). Shorten it.")
        return text

    @torch.no_grad()
    def encode(self, concepts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(list(concepts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    def null_condition(self, batch_size: int) -> torch.Tensor:
        if self._null is None:
            self._null = self.encode([""])
        return self._null.expand(batch_size, -1, -1)

    def token_positions(self, text: str, include_last: bool = True) -> list[int]:
        """Positions of the text's own tokens in its encoded prompt (after BOS), plus its EOS token,
        which in a causal CLIP text encoder has read the whole prompt."""
        n = min(self.token_count(text), self.tokenizer.model_max_length)  # encode() truncates longer texts
        return list(range(1, n - 1)) + ([n - 1] if include_last else []) or [n - 1]

    # ---- prompt sets -----------------------------------------------------------------------------
    def prompt_for(self, concept: str) -> str:
        """The plain prompt showing a concept: "a star" (object), "a red shape" (attribute)."""
        kind = self.kind_of(concept)
        if kind == "objects":
            return f"{_article(concept)} {concept}"
        if kind in ("attributes", "styles"):
            return f"{_article(concept)} {concept} shape"
        return concept

    def forget_prompts(self, concept: str) -> list[str]:
        """The concept and paraphrases of it (prompt robustness is part of forgetting)."""
        kind = self.kind_of(concept)
        objects, attributes = self.vocabulary.get("objects", []), self.vocabulary.get("attributes", [])
        if kind == "objects":
            return [f"{_article(concept)} {concept}", f"{_article(concept)} {concept} shape", f"a picture of {_article(concept)} {concept}",
                    *(f"{_article(a)} {a} {concept}" for a in attributes[:3])]
        if kind in ("attributes", "styles"):
            return [f"{_article(concept)} {concept} shape", *(f"{_article(concept)} {concept} {o}" for o in objects[:4])]
        if len(concept.split()) > 1 and self.vocabulary:  # a compound such as "red star"
            return [f"{_article(concept)} {concept}", f"{_article(concept)} {concept} shape", f"a picture of {_article(concept)} {concept}"]
        return [t.format(concept) for t in GENERIC_FORGET_TEMPLATES] if not self.vocabulary else [concept]

    def default_retain(self, forget: Sequence[str]) -> list[str]:
        """Concepts kept when the user names none: the other words of the same kinds as the erased ones."""
        if not self.vocabulary:
            return list(GENERIC_RETAIN)
        words = set(" ".join(forget).split())
        kinds = {self.kind_of(w) for w in words} - {None} or {"objects"}
        return [w for k in ("objects", "attributes", "styles") if k in kinds for w in self.vocabulary.get(k, []) if w not in words]

    # ---- recognising concepts in images --------------------------------------------------------
    def scored_by_clip(self) -> bool:
        return not self.vocabulary and (self.evaluator is None or not self.evaluator.config.heads)

    @torch.no_grad()
    def recognises(self, targets: Sequence[str], images: torch.Tensor) -> torch.Tensor | None:
        """Whether each image shows its target (every vocabulary word of it the evaluator has a head
        for); None where no evaluator can judge (real SD without CLIP)."""
        if self.evaluator is None or not self.evaluator.config.heads:
            from ..metrics.clip import clip_status, zero_shot_hits

            if not self.scored_by_clip() or not clip_status().available:
                return None
            return zero_shot_hits(images, targets, alternatives=GENERIC_ALTERNATIVES)
        heads = self.evaluator.head_classes()
        preds = {k: v.argmax(1).cpu() for k, v in self.evaluator.head_logits(images.to(self.evaluator.device)).items()}
        hits = torch.ones(len(targets), dtype=torch.bool)
        for i, target in enumerate(targets):
            words = target.split()
            judged = False
            for head, names in heads:
                for w in words:
                    if w in names:
                        hits[i] &= bool(preds[head][i] == names.index(w))
                        judged = True
            if not judged:
                return None
        return hits

    # ---- data -------------------------------------------------------------------------------------
    def _shape_specs(self, targets: Sequence[str], n_per: int, seed: int) -> list | None:
        """Drawing specs of the shapes twin for the targets (n_per each), or None for any other model."""
        if self.twin.get("dataset") != "shapes":
            return None
        import numpy as np

        from ..datasets import shapes as data

        rng = np.random.default_rng(seed)
        specs = []
        for target in targets:
            words = target.split()
            shape = next((w for w in words if w in data.SHAPES), None)
            colour = next((w for w in words if w in data.COLOURS), None)
            specs += [data.random_spec(rng, shape=shape, colour=colour) for _ in range(n_per)]
        return specs

    @staticmethod
    def _render(specs: list) -> torch.Tensor:
        import numpy as np

        from ..datasets import shapes as data

        return torch.from_numpy(np.stack([data.render(s) for s in specs])).permute(0, 3, 1, 2).float() / 255

    def reference_images(self, targets: Sequence[str], n_per: int, seed: int = 0) -> torch.Tensor | None:
        """Real images of the targets (the twin's drawing code); None without a bundled generator."""
        specs = self._shape_specs(targets, n_per, seed)
        return None if specs is None else self._render(specs)

    def concept_data(self, concept: str, n: int, seed: int) -> torch.Tensor:
        return self.captioned_data(concept, n, seed)[0]

    def captioned_data(self, concept: str, n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
        """Latents of the concept with a caption each: the twin's rendered images captioned with what they show
        ("a red star"); for any other model, samples of the original model captioned with their prompt."""
        specs = self._shape_specs([concept], n, seed)
        if specs is not None:
            captions = [f"{_article(s.colour)} {s.colour} {s.shape}" for s in specs]
            return self.encode_images(self._render(specs)).to(self.dtype), captions
        seeds = [seed * 100_003 + i for i in range(n)]
        prompt = self.prompt_for(concept)
        latents = torch.cat([self.denoise(self.initial_noise(seeds[i : i + 8]), self.encode([prompt] * len(seeds[i : i + 8])))
                             for i in range(0, n, 8)])
        return latents, [prompt] * n

    def describe(self) -> dict:
        info = super().describe()
        info["scheduler"] = self.pipeline_scheduler.__class__.__name__
        info["text_encoder_parameters"] = sum(p.numel() for p in self.text_encoder.parameters())
        info["sampling"] = {"num_inference_steps": self.sampling.num_inference_steps, "guidance_scale": self.sampling.guidance_scale}
        if self.vocabulary:
            info["vocabulary"] = self.vocabulary
        return info
