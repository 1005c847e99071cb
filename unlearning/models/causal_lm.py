"""The causal-language-model family: any ``AutoModelForCausalLM`` checkpoint, and the facts-lm twin.

Loaded with transformers' ``AutoModelForCausalLM`` / ``AutoTokenizer`` (safetensors only, never remote
code) from a hub id or a local folder; fp32 on CPU, bf16 on CUDA (fp16 where the GPU has no bf16). The
embedded twin in ``assets/facts-lm`` is a ``LlamaForCausalLM`` loaded by exactly this code.

Nothing here changes the base weights. An unlearning method trains *separate* copies of the parameters it
changes and runs the model with them substituted (``torch.func.functional_call``): the frozen model and the
one being trained are the same module, so a 7 B model is held once, and the original and the unlearned
model are compared by running one module with and without the edit's tensors.

Notation (RMU's, Li et al. 2024):
    x             a token sequence; h^(l)(x) the output of decoder layer l, (B, T, D) (the residual stream)
    p(y | x)      the model's next-token distribution; NLL(x) = - sum_t log p(x_t | x_<t)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch.func import functional_call

from ..edit import Edit
from ..errors import InputError
from ..metrics import lm as M
from .base import read_twin
from .lm_data import Domain, data_roots, published_domain, published_names, twin_domains, where_to_put_data

log = logging.getLogger(__name__)

Params = Mapping[str, torch.Tensor] | None  # parameter name -> value substituted for the base's (None: the base)

# Parameter groups for the language-model methods (RMU trains the MLP output projections of a few layers).
LM_PARAMETER_GROUPS = {
    "mlp_out": "the MLP output projection of each chosen layer (RMU's choice: down_proj on Llama / Mistral, c_proj on GPT-2)",
    "mlp": "every MLP weight of each chosen layer",
    "layer": "every weight of each chosen layer",
}
_MLP_OUT = ("mlp.down_proj.", "mlp.c_proj.", "mlp.fc2.", "mlp.dense_4h_to_h.", "mlp.fc_out.")


class _Stop(Exception):  # raised by the hook that captures h^(l) so the layers above l are not run
    pass


def decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """(qualified name, the list of decoder blocks) of a Llama / Mistral / Qwen / GPT-2 / GPT-NeoX style model."""
    for prefix in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        module = model
        try:
            for part in prefix.split("."):
                module = getattr(module, part)
        except AttributeError:
            continue
        if isinstance(module, torch.nn.ModuleList):
            return prefix, module
    raise InputError(f"cannot find the decoder layers of {type(model).__name__}; supported: Llama / Mistral / Qwen / GPT-2 / "
                     "GPT-NeoX style models.")


class TextModel:
    """A causal LM and its tokenizer, with everything the methods and the scoring need.

    Every function takes ``params``: tensors to use instead of the base's (an edit, or the copies a method
    is training); the base module is never modified.
    """

    family = "causal-lm"

    def __init__(self, model: torch.nn.Module, tokenizer, device: torch.device | str = "cpu", max_length: int = 512):
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.max_length = max_length
        if tokenizer.pad_token_id is None:  # Llama / Mistral tokenizers have none; any id works under the mask
            tokenizer.pad_token = tokenizer.eos_token

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ---- tokens --------------------------------------------------------------------------------
    def encode(self, text: str, special: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def batch(self, token_lists: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (input_ids, attention_mask), (B, T), truncated to ``max_length``."""
        token_lists = [t[: self.max_length] for t in token_lists]
        width = max(len(t) for t in token_lists)
        ids = torch.full((len(token_lists), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(token_lists), width), dtype=torch.long)
        for i, t in enumerate(token_lists):
            ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
            mask[i, : len(t)] = 1
        return ids.to(self.device), mask.to(self.device)

    def texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch([self.encode(t) for t in texts])

    # ---- forward passes --------------------------------------------------------------------------
    def _call(self, params: Params, **kwargs):
        if not params:
            return self.model(**kwargs)
        dtype = self.dtype
        return functional_call(self.model, {n: p.to(self.device, dtype) for n, p in params.items()}, (), kwargs, strict=False)

    def logits(self, ids: torch.Tensor, mask: torch.Tensor, params: Params = None) -> torch.Tensor:
        """(B, T, V) float32 next-token logits."""
        return self._call(params, input_ids=ids, attention_mask=mask, use_cache=False).logits.float()

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor, layer: int, params: Params = None) -> torch.Tensor:
        """h^(layer)(x): the output of decoder block ``layer`` (0-based), (B, T, D) float32; blocks above it are skipped."""
        _, blocks = decoder_layers(self.model)
        if not 0 <= layer < len(blocks):
            raise InputError(f"layer {layer} does not exist: this model has decoder layers 0..{len(blocks) - 1}.")
        captured: list[torch.Tensor] = []

        def hook(_module, _args, output):
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop

        handle = blocks[layer].register_forward_hook(hook)
        try:
            self._call(params, input_ids=ids, attention_mask=mask, use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured[0].float()

    def token_nll(self, ids: torch.Tensor, mask: torch.Tensor, params: Params = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-token NLL of x_t given x_<t, (B, T-1); mask of the predicted tokens, (B, T-1))."""
        logp = self.logits(ids, mask, params).log_softmax(-1)[:, :-1]
        nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
        return nll, mask[:, 1:].to(nll.dtype)

    def mean_nll(self, ids: torch.Tensor, mask: torch.Tensor, params: Params = None) -> torch.Tensor:
        """The language-modelling loss: mean NLL over the predicted tokens of a batch (differentiable)."""
        nll, keep = self.token_nll(ids, mask, params)
        return (nll * keep).sum() / keep.sum().clamp_min(1)

    # ---- scoring (lm-evaluation-harness's loglikelihood) -------------------------------------------
    @torch.no_grad()
    def loglikelihood(self, pairs: Sequence[tuple[str, str]], params: Params = None) -> list[float]:
        """sum log p(continuation | context) per pair; the continuation's tokens are those of
        tok(context + continuation) after tok(context), as the harness splits them."""
        seqs, starts = [], []
        for context, continuation in pairs:
            whole = self.encode(context + continuation)
            start = len(self.encode(context))
            if start >= len(whole):
                raise InputError(f"the continuation {continuation!r} adds no tokens after its context.")
            if len(whole) > self.max_length:  # keep the end (the harness truncates on the left)
                cut = len(whole) - self.max_length
                whole, start = whole[cut:], max(1, start - cut)
            seqs.append(whole)
            starts.append(start)
        ids, mask = self.batch(seqs)
        logp = self.logits(ids, mask, params).log_softmax(-1)
        out = []
        for i, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
            targets = torch.tensor(seq[start:], device=logp.device)
            out.append(float(logp[i, start - 1 : len(seq) - 1].gather(-1, targets[:, None]).sum()))
        return out

    @torch.no_grad()
    def nll_sum(self, texts: Sequence[str], params: Params = None) -> tuple[float, int]:
        ids, mask = self.texts(texts)
        nll, keep = self.token_nll(ids, mask, params)
        return float((nll * keep).sum()), int(keep.sum())

    def accuracy(self, questions: Sequence[M.Question], subject: str | None, params: Params = None, fmt: str = "letter") -> float:
        return M.accuracy(lambda pairs: self.loglikelihood(pairs, params), questions, subject, fmt=fmt)

    def perplexity(self, texts: Sequence[str], params: Params = None) -> float:
        return M.perplexity(lambda batch: self.nll_sum(batch, params), texts)

    # ---- continuations -----------------------------------------------------------------------------
    @torch.no_grad()
    def continue_text(self, prompt: str, *, params: Params = None, max_new_tokens: int = 24, temperature: float = 0.0,
                      top_p: float = 1.0, seed: int = 0) -> str:
        """Greedy (``temperature`` 0) or sampled continuation of ``prompt``.

        Sampling draws its uniforms from a CPU generator seeded with ``seed`` (inverse-CDF sampling), so the
        original and the unlearned model get the *same* random numbers: where their distributions agree,
        they pick the same token, and a difference in the text is the edit's.
        """
        tokens = self.encode(prompt)
        g = torch.Generator().manual_seed(int(seed))
        new: list[int] = []
        eos = self.tokenizer.eos_token_id
        for _ in range(max_new_tokens):
            ids, mask = self.batch([(tokens + new)[-self.max_length :]])  # the most recent tokens, if the text outgrows the model
            logits = self.logits(ids, mask, params)[0, -1]
            u = float(torch.rand((), generator=g))
            if temperature <= 0:
                token = int(logits.argmax())
            else:
                probs = (logits / temperature).softmax(-1).cpu().double()
                order = probs.argsort(descending=True)
                sorted_p = probs[order]
                keep = (sorted_p.cumsum(0) - sorted_p) < top_p  # nucleus: the smallest prefix with mass >= top_p
                sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
                cdf = (sorted_p / sorted_p.sum()).cumsum(0)
                token = int(order[min(int(torch.searchsorted(cdf, torch.tensor(u, dtype=cdf.dtype))), len(cdf) - 1)])
            if token == eos:
                break
            new.append(token)
        return self.tokenizer.decode(new, skip_special_tokens=True)

    # ---- parameters ----------------------------------------------------------------------------------
    def num_layers(self) -> int:
        return len(decoder_layers(self.model)[1])

    def parameter_names(self, group: str, layers: Sequence[int]) -> list[str]:
        """Names of the parameters of ``group`` (see LM_PARAMETER_GROUPS) in the given decoder layers ("all": every weight)."""
        if group == "all":
            return [n for n, _ in self.model.named_parameters()]
        if group not in LM_PARAMETER_GROUPS:
            raise InputError(f"unknown parameter group '{group}'; choose one of {', '.join([*LM_PARAMETER_GROUPS, 'all'])}.")
        prefix, blocks = decoder_layers(self.model)
        names = []
        for layer in layers:
            if not 0 <= layer < len(blocks):
                raise InputError(f"layer {layer} does not exist: this model has decoder layers 0..{len(blocks) - 1}.")
            own = [f"{prefix}.{layer}.{n}" for n, _ in blocks[layer].named_parameters()]
            if group == "mlp_out":
                own = [n for n in own if any(f".{layer}.{m}" in n for m in _MLP_OUT)]
            elif group == "mlp":
                own = [n for n in own if f".{layer}.mlp." in n]
            if not own:
                raise InputError(f"layer {layer} of {type(self.model).__name__} has no '{group}' parameters this version knows.")
            names += own
        return names

    def trainable(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """float32 copies of the named parameters, requiring grad (the method trains these; the base stays)."""
        own = dict(self.model.named_parameters())
        return {n: own[n].detach().to(self.device, torch.float32).clone().requires_grad_(True) for n in names}

    def edit_from(self, params: Mapping[str, torch.Tensor], **info) -> Edit:
        """An Edit of the trained copies (finite-checked; unchanged tensors dropped)."""
        return Edit.from_values(self.model, params, **info)

    @staticmethod
    def params_of(edit: Edit | None) -> Params:
        return edit.params if edit is not None else None


class CausalLMAdapter(TextModel):
    """A causal LM loaded from a folder or hub id, with its domains (the model's concepts)."""

    def __init__(self, source: str | Path, device: torch.device, dtype: torch.dtype = torch.float32):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        self.source = str(source)
        tokenizer = AutoTokenizer.from_pretrained(self.source, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(self.source, dtype=dtype, use_safetensors=True, trust_remote_code=False)
        model.to(device).eval().requires_grad_(False)
        folder = Path(self.source) if Path(self.source).is_dir() else None
        self.twin = read_twin(folder) if folder is not None else {}
        super().__init__(model, tokenizer, device, max_length=int(self.twin.get("max_length", 512)))
        self._folder = folder
        self._domains: dict[str, Domain] = twin_domains(folder, self.twin) if folder is not None else {}
        self.sampling = self.twin.get("sampling", {})

    # ---- domains (the concepts of this family) ----------------------------------------------------
    def concepts(self) -> list[str]:
        return [*self._domains, *(n for n in published_names(data_roots(self._folder)) if n not in self._domains)]

    def domain(self, name: str) -> Domain:
        name = self.validate_concept(name)
        if name not in self._domains:
            found = published_domain(name, data_roots(self._folder))
            if found is None:
                raise InputError(f"no files for the domain '{name}': {where_to_put_data()}.")
            self._domains[name] = found
        return self._domains[name]

    def validate_concept(self, concept: str) -> str:
        name = (concept or "").strip().lower()
        if name in self._domains or name in published_names(data_roots(self._folder)) or (
                name.startswith("mmlu:") and published_domain(name, data_roots(self._folder)) is not None):
            return name
        known = self.concepts()
        raise InputError(f"unknown domain '{concept}' for this language model; "
                         + (f"available: {', '.join(known)}." if known else f"none is available: {where_to_put_data()}."))

    def default_retain(self, forget: Sequence[str]) -> list[str]:
        roles = [n for n, d in self._domains.items() if d.role == "retain" and n not in forget]
        return roles or [c for c in self.concepts() if c not in forget][:1]

    def default_prompts(self, domains: Sequence[str]) -> list[str]:
        """The twin's demo prompts for these domains (twin.json ``prompts``), else a sentence start per domain."""
        prompts = self.twin.get("prompts", {})
        return [p for d in domains for p in prompts.get(d, [])]

    def describe(self) -> dict:
        return {"source": self.source, "family": self.family, "device": str(self.device),
                "dtype": str(self.dtype).replace("torch.", ""), "parameters": sum(p.numel() for p in self.model.parameters()),
                "architecture": type(self.model).__name__, "layers": self.num_layers()}


def masked_mse(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean over real tokens and dimensions of (h - target)^2; h (B, T, D), target (B, T, D) or (D,), mask (B, T)."""
    keep = mask[..., None].to(h.dtype)
    return ((h - target) ** 2 * keep).sum() / (keep.sum() * h.shape[-1]).clamp_min(1)


