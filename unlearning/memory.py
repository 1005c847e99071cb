"""Where the memory of a run goes, measured on any device, and the GPU memory it projects.

CUDA has ``torch.cuda.max_memory_allocated``; a CPU has only the process's resident set. To say what a
method would need on a GPU without one, :class:`MemoryProbe` sorts the tensors alive during a run into
four parts, each at its own peak:

    weights      every other live tensor: frozen and trained weights, masks, snapshots, data pools
                 (each storage counted once, so weights a trained copy shares with the base count once)
    grads        ``.grad`` of live parameters
    optimizer    the state of every optimiser that stepped (Adam's moments)
    activations  tensors autograd keeps for the backward pass, while they are alive (weights it saves are
                 not counted again); attention maps are kept apart: N x N tensors saved inside a
                 self-attention call over N image tokens (the math kernel, which the fused kernels avoid and
                 double backward needs) grow with the square of the pixel count, everything else linearly

Weights, grads and optimizer state are read at every optimiser step that holds more than any before
(``torch.optim`` has a global step hook) and at the end; activations through
``torch.autograd.graph.saved_tensors_hooks``. Tensors inside a gradient-checkpointed block are not saved,
so they are (correctly) not counted; what the recomputation holds for one block during the backward pass
is not counted either.

The GPU projection (:func:`project`) is arithmetic on those parts: the frozen base at 2 bytes per value
(the VAE of SDXL at 4 in float16: it is kept in float32 there), the rest as measured, activations scaled
to the user's resolution R_user from the measured R, and the parts summed, which bounds the real peak
from above (the parts peak at different moments). Not included: the CUDA context (~0.3-0.5 GB), kernels'
workspace and allocator fragmentation.
"""

from __future__ import annotations

import gc
import warnings
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode

PARTS = ("weights", "grads", "optimizer", "activations")
FORMULA = ("weights(frozen base at 2 bytes per value, float16 keeps a force_upcast VAE at 4) + grads + optimizer + "
           "activations x (R_user / R)^2 + attention maps x (R_user / R)^4; each part at its own peak (an upper bound), "
           "without the CUDA context and allocator fragmentation")


def _key(t: torch.Tensor) -> tuple[int, int] | None:
    """(data pointer, bytes) of a tensor's storage; None for tensors without one (meta, sparse, zero-size)."""
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    if t.device.type == "meta" or storage.nbytes() == 0:
        return None
    return storage.data_ptr(), storage.nbytes()


def storages(modules: Iterable[torch.nn.Module]) -> dict[int, tuple[int, torch.dtype]]:
    """data pointer -> (number of values, dtype) of every parameter and buffer of ``modules``."""
    out = {}
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            if (k := _key(t)) is not None:
                out[k[0]] = (k[1] // t.element_size(), t.dtype)
    return out


@dataclass
class MemoryParts:
    weights: int = 0
    grads: int = 0
    optimizer: int = 0
    activations_peak: int = 0  # the largest total of live saved tensors, here
    activations: int = 0  # linear in the pixel count } at the moment the projected total is largest (which for a
    attention_maps: int = 0  # quadratic in it         } larger resolution may be another moment than here)
    weights_by_role: dict = field(default_factory=dict)  # {"base": bytes, "other": bytes}

    def as_dict(self) -> dict:
        return {"weights": self.weights, "grads": self.grads, "optimizer": self.optimizer, "activations": self.activations_peak,
                "activations_at_projected_peak": {"linear": self.activations, "attention_maps": self.attention_maps},
                "weights_by_role": dict(self.weights_by_role)}


class MemoryProbe:
    """Context manager measuring :class:`MemoryParts` of whatever runs inside it (in this thread).

    ``base`` are the frozen model's modules (the adapter's components): their storages are the "base" role
    of the weights, which the projection re-prices at the GPU's half precision. ``ignore`` drops tensors
    (e.g. an Edit's CPU copy) from the final reading.
    """

    def __init__(self, base: Iterable[torch.nn.Module], image_tokens: Iterable[int] = (), pixel_scale: float = 1.0):
        self.base = storages(base)
        self.image_tokens = set(image_tokens)  # token counts of the UNet's attention levels at the measured resolution
        self.pixel_scale = pixel_scale  # (R_user / R)^2: the activations' split is kept where it projects largest
        self._best_projected = -1.0
        self.parts = MemoryParts()
        self.optimizers: weakref.WeakSet = weakref.WeakSet()
        self.optimised: dict[int, int] = {}  # id of every optimiser that stepped -> values it updates
        self._attention: tuple[int, int] | None = None  # (N_query, N_key) while inside scaled_dot_product_attention
        self._live: dict[int, list] = {}  # storage pointer -> [bytes, live saved tensors, quadratic?]
        self._live_lin = self._live_quad = 0
        self._best_state = -1
        self._handles: list = []

    # ---- activations -------------------------------------------------------------------------------
    def _pack(self, t: torch.Tensor):
        weight = isinstance(t, torch.nn.Parameter) or isinstance(t._base, torch.nn.Parameter)  # a weight or a view of one
        if not weight and (k := _key(t)) is not None and k[0] not in self.base:
            ptr, nbytes = k
            entry = self._live.get(ptr)
            if entry is None:
                quad = (self._attention is not None and self._attention[0] == self._attention[1] in self.image_tokens
                        and t.dim() >= 2 and tuple(t.shape[-2:]) == self._attention)
                entry = self._live[ptr] = [nbytes, 0, quad]
                if quad:
                    self._live_quad += nbytes
                else:
                    self._live_lin += nbytes
                self.parts.activations_peak = max(self.parts.activations_peak, self._live_lin + self._live_quad)
                projected = self._live_lin * self.pixel_scale + self._live_quad * self.pixel_scale**2
                if projected > self._best_projected:
                    self._best_projected = projected
                    self.parts.activations, self.parts.attention_maps = self._live_lin, self._live_quad
            entry[1] += 1
            weakref.finalize(t, self._release, ptr)
        return t

    def _release(self, ptr: int) -> None:
        entry = self._live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self._live[ptr]
            if entry[2]:
                self._live_quad -= entry[0]
            else:
                self._live_lin -= entry[0]

    # ---- weights, grads, optimiser state --------------------------------------------------------------
    def _state_bytes(self) -> int:
        total = 0
        for opt in list(self.optimizers):
            for group in opt.param_groups:
                for p in group["params"]:
                    total += p.grad.nbytes if p.grad is not None else 0
            total += sum(v.nbytes for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor))
        return total

    def _on_step(self, optimizer, args, kwargs) -> None:
        self.optimizers.add(optimizer)
        self.optimised[id(optimizer)] = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
        if (now := self._state_bytes()) > self._best_state:
            self._best_state = now
            self.read()

    def read(self, ignore: Iterable[torch.Tensor] = ()) -> MemoryParts:
        """Sort every live tensor into weights / grads / optimizer now; keep the largest of each."""
        skip = {k[0] for t in ignore if (k := _key(t)) is not None}
        state_ids = {id(v) for opt in list(self.optimizers) for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)}
        seen: dict[int, str] = {}
        sizes: dict[int, int] = {}
        with warnings.catch_warnings():  # isinstance() on some of torch's deprecated module attributes warns
            warnings.simplefilter("ignore")
            tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
        for t in tensors:
            grad = t.grad if isinstance(t, torch.nn.Parameter) else None
            for tensor, part in ((grad, "grads"), (t, "optimizer" if id(t) in state_ids else "weights")):
                if tensor is None or (k := _key(tensor)) is None or k[0] in skip or k[0] in self._live:
                    continue
                if seen.get(k[0]) in ("grads", "optimizer"):
                    continue
                seen[k[0]], sizes[k[0]] = part, k[1]
        now = {p: 0 for p in ("weights", "grads", "optimizer")}
        base = 0
        for ptr, part in seen.items():
            now[part] += sizes[ptr]
            base += sizes[ptr] if part == "weights" and ptr in self.base else 0
        if now["weights"] > self.parts.weights:
            self.parts.weights = now["weights"]
            self.parts.weights_by_role = {"base": base, "other": now["weights"] - base}
        self.parts.grads = max(self.parts.grads, now["grads"])
        self.parts.optimizer = max(self.parts.optimizer, now["optimizer"])
        return self.parts

    def __enter__(self) -> MemoryProbe:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handles.append(register_optimizer_step_post_hook(self._on_step))
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        self._marker = _AttentionMarker(self)
        self._marker.__enter__()
        self.read()
        return self

    def __exit__(self, *exc) -> None:
        self._marker.__exit__(*exc)
        self._hooks.__exit__(*exc)
        for handle in self._handles:
            handle.remove()


class _AttentionMarker(TorchFunctionMode):
    """Tells the probe when autograd saves tensors inside ``F.scaled_dot_product_attention`` (and for which N)."""

    def __init__(self, probe: MemoryProbe):
        super().__init__()
        self.probe = probe

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not torch.nn.functional.scaled_dot_product_attention:
            return func(*args, **kwargs)
        query, key = args[0], args[1]
        self.probe._attention = (query.shape[-2], key.shape[-2])
        try:
            return func(*args, **kwargs)
        finally:
            self.probe._attention = None


# ---- the projection -----------------------------------------------------------------------------------

def project(parts: MemoryParts, base: dict[int, tuple[int, torch.dtype]], *, measured_dtype: torch.dtype, resolution: int,
            user_resolution: int, upcast_values: int = 0) -> dict:
    """GPU bytes of the same run at ``user_resolution`` with the base in float16 and in bfloat16.

    ``base``: the frozen base's storages (values, dtype); ``upcast_values``: values of modules a float16 run keeps in
    float32 (SDXL's VAE). A float32 rehearsal projects the float32 run (the base is not re-priced).
    """
    scale = (user_resolution / resolution) ** 2
    activations = parts.activations * scale + parts.attention_maps * scale**2
    rest = parts.weights_by_role.get("other", 0) + parts.grads + parts.optimizer + activations
    base_values = sum(n for n, _ in base.values())
    if measured_dtype == torch.float32:
        return {"float32": int(parts.weights_by_role.get("base", 0) + rest)}
    return {"float16": int(2 * base_values + 2 * upcast_values + rest), "bfloat16": int(2 * base_values + rest)}
