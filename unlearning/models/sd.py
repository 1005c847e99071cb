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
    conditioner_name = "text_encoder"
    text_parts = ("text_encoder",)  # the text encoders a condition is made from

    def __init__(self, path: str | Path, device: torch.device, dtype: torch.dtype = torch.float32, resolution: int | None = None,
                 pipe: StableDiffusionPipeline | None = None):
        """Load the folder or hub snapshot ``path``; or, with ``pipe``, wrap components already built in memory
        (a full-size architecture with random weights for a rehearsal; ``path`` then only names it)."""
        super().__init__(str(path), device, dtype)
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()  # the app shows its own progress; keep logs readable
        transformers_logging.disable_progress_bar()
        pipe = pipe or self.load_pipeline(path, dtype)
        self.unet = pipe.unet.to(device).eval()
        self.vae = pipe.vae.to(device).eval()
        self.tokenizer = pipe.tokenizer
        for name in self.text_parts:
            setattr(self, name, getattr(pipe, name).to(device).eval())
        self.pipeline_scheduler = pipe.scheduler  # the checkpoint's own scheduler (exports keep it)
        self.pipeline_scheduler_config = pipe.scheduler.config
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        for module in self.modules().values():
            for p in module.parameters():
                p.requires_grad_(False)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        size = self.unet.config.sample_size
        self.resolution = int(resolution or (size if isinstance(size, int) else size[0]) * self.vae_scale_factor)
        if self.resolution % self.vae_scale_factor:
            raise InputError(f"resolution {self.resolution} is not a multiple of the VAE's downsampling ({self.vae_scale_factor}).")
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

    def load_pipeline(self, path: str | Path, dtype: torch.dtype):
        """The checkpoint through diffusers' own pipeline class (safetensors only, no safety checker, no remote code)."""
        return StableDiffusionPipeline.from_pretrained(
            str(path), dtype=dtype, use_safetensors=True, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )

    def modules(self) -> dict[str, torch.nn.Module]:
        """The model's weighted components by their folder names (the frozen base)."""
        return {"unet": self.unet, "vae": self.vae, **{name: getattr(self, name) for name in self.text_parts}}

    def pipeline(self, unet: torch.nn.Module | None = None):
        """A diffusers pipeline of this model's components with ``unet`` in place of the base's (for export)."""
        return StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=unet or self.unet,
                                       scheduler=self.pipeline_scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)

    # ---- sampling --------------------------------------------------------------------------------
    def sampler_config(self):
        return self.pipeline_scheduler_config  # the checkpoint's own betas and spacing

    def sample_shape(self) -> tuple[int, int, int]:
        side = self.resolution // self.vae_scale_factor
        return (self.unet.config.in_channels, side, side)

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

    @torch.no_grad()
    def token_embeddings_many(self, texts: Sequence[str | None], positions: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Rows of many prompts in one batched text-encoder call that stops at the last row asked for: CLIP's text
        encoder is causal, so rows up to position L depend only on tokens up to L and the padded tail need not be
        computed (the closed-form editors ask for a few rows of hundreds of prompts)."""
        if not texts:
            return []
        if self.text_parts != ("text_encoder",):  # SDXL: two encoders' rows side by side (FamilyAdapter's per-text path)
            return super().token_embeddings_many(texts, positions)
        length = max(max(p) for p in positions) + 1
        unique = list(dict.fromkeys(t or "" for t in texts))  # e.g. the empty anchor prompt once, not per concept
        ids = self.tokenizer(unique, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids[:, :length].to(self.device)
        rows = self.text_encoder(ids)[0].float()  # (U, length, D)
        at = {t: i for i, t in enumerate(unique)}
        return [rows[at[t or ""], list(p)] for t, p in zip(texts, positions, strict=True)]

    def null_condition(self, batch_size: int) -> torch.Tensor:
        if self._null is None:
            self._null = self.encode([""])
        return self._null.expand(batch_size, -1, -1)

    # ---- token embeddings (attacks on the prompt, AdvUnlearn) -----------------------------------------
    def _ids(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids.to(self.device)

    def prompt_inputs(self, prompts: Sequence[str]) -> tuple[torch.Tensor, list[int]]:
        embeds = self.text_encoder.embeddings.token_embedding(self._ids(prompts))  # (B, 77, D)
        lengths = [min(self.token_count(p), self.tokenizer.model_max_length) for p in prompts]
        return embeds.float(), lengths

    def encode_inputs(self, inputs: torch.Tensor, conditioner: torch.nn.Module | None = None) -> torch.Tensor:
        """CLIPTextModel's forward from token embeddings instead of ids: + positions, causal encoder, final norm
        (the per-token outputs SD feeds the UNet; the pooled output is not used)."""
        from transformers.masking_utils import create_causal_mask

        te = conditioner if conditioner is not None else self.text_encoder
        hidden = te.embeddings(inputs_embeds=inputs.to(te.dtype))  # (B, T, D): token + position embeddings
        mask = create_causal_mask(config=te.config, inputs_embeds=hidden, attention_mask=None, cache=None)
        hidden = te.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
        return te.final_layer_norm(hidden).to(self.dtype)

    def max_tokens(self) -> int | None:
        return self.tokenizer.model_max_length

    def vocabulary_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every token but the special ones (begin / end of text, padding)."""
        special = set(self.tokenizer.all_special_ids)
        ids = torch.tensor([i for i in range(len(self.tokenizer)) if i not in special], device=self.device)
        return self.text_encoder.embeddings.token_embedding.weight[ids].detach().float(), ids

    def decode_tokens(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids]).strip()

    def token_positions(self, text: str, include_last: bool = True) -> list[int]:
        """Positions of the text's own tokens in its encoded prompt (after BOS), plus its EOS token,
        which in a causal CLIP text encoder has read the whole prompt."""
        n = min(self.token_count(text), self.tokenizer.model_max_length)  # encode() truncates longer texts
        return list(range(1, n - 1)) + ([n - 1] if include_last else []) or [n - 1]

    def token_ids(self, text: str | None) -> list[int]:
        """Token ids of the text before padding (BOS ... EOS), truncated as ``encode`` truncates; None: the empty prompt."""
        return self.tokenizer(text or "", truncation=True, max_length=self.tokenizer.model_max_length).input_ids

    def concept_positions(self, prompt: str, concept: str, use_pooler: bool = False) -> list[int]:
        """Positions of the concept's tokens in the prompt's condition (every occurrence); with ``use_pooler``
        also every end-of-text position, padding included (SD 1.x and the twin pad with end-of-text)."""
        ids = self.tokenizer(prompt, padding="max_length", truncation=True, max_length=self.tokenizer.model_max_length).input_ids
        word = self.token_ids(concept)[1:-1]
        found = [i + j for i in range(1, len(ids) - len(word) + 1) if ids[i : i + len(word)] == word for j in range(len(word))]
        if use_pooler:
            found += [i for i, t in enumerate(ids) if t == self.tokenizer.eos_token_id]
        return sorted(set(found))

    def anchor_prompt(self, prompt: str, concept: str, anchor: str | None) -> str | None:
        """``prompt`` with the concept swapped for the anchor ("a red star" -> "a red circle"), articles fixed;
        with no anchor the concept is dropped ("a picture of a star" -> "a picture of")."""
        if anchor is None:
            out = re.sub(rf"\b(an?\s+)?{re.escape(concept)}\b", "", prompt)
        else:
            out = re.sub(rf"\b(an?\s+)?{re.escape(concept)}\b",
                         lambda m: (f"{_article(anchor)} " if m.group(1) else "") + anchor, prompt)
        return " ".join(out.split())

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

    def can_recognise(self) -> bool:
        if self.evaluator is not None and self.evaluator.config.heads:
            return True
        from ..metrics.clip import clip_status

        return self.scored_by_clip() and clip_status().available

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

    def object_masks(self, concept: str, n: int, seed: int) -> torch.Tensor | None:
        """The twin's exact object masks of ``captioned_data(concept, n, seed)``'s images; None for any other model
        (no segmenter ships here)."""
        specs = self._shape_specs([concept], n, seed)
        if specs is None:
            return None
        import numpy as np

        from ..datasets import shapes as data

        return torch.from_numpy(np.stack([data.object_mask(s) for s in specs]))[:, None]

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
        for name in self.text_parts:
            info[f"{name}_parameters"] = sum(p.numel() for p in getattr(self, name).parameters())
        info["resolution"] = self.resolution
        info["sampling"] = {"num_inference_steps": self.sampling.num_inference_steps, "guidance_scale": self.sampling.guidance_scale}
        if self.vocabulary:
            info["vocabulary"] = self.vocabulary
        return info
