"""A fast path for the attention of segment_anything's ViT image encoder.

Upstream ``segment_anything.modeling.image_encoder.Attention.forward`` materialises the full
attention matrix ``(B * heads, L, L)`` (L = tokens per window, 4096 in a global block at 1024 px),
adds SAM's decomposed relative-position bias, softmaxes and multiplies by ``v``. The fast path
computes the same thing with ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels on
CPU and GPU: no separate softmax pass, no second ``L x L`` tensor, less memory traffic), with the
relative-position bias folded in as its additive ``attn_mask``, as segment-anything-fast showed.

The per-offset embeddings come from upstream's own ``get_rel_pos`` (including its interpolation of
``rel_pos_h``/``rel_pos_w`` to other grid sizes); only the sum of the two decomposed terms is formed
here, into a fresh mask instead of into an existing attention map. On the CPU without autograd that
mask is written into a reused buffer: a fresh 805 MB mask per global block (ViT-B, 1024 px) costs
more in page faults than in arithmetic.

Injection, not a copy: `enable_fast_attention` binds `sdpa_forward` as the ``forward`` of each
upstream ``Attention`` instance (the class, parameters, state-dict keys and child modules stay as
they are, so peft's LoRA on ``attn.qkv`` and forward hooks on the blocks keep working);
`disable_fast_attention` removes the binding again. `SamSegmenter` turns it on by default; turn it
off per model (``model.set_fast_attention(False)``, ``load_model(..., fast_attention=False)``) or
for every new model with the environment variable ``SAMLIVER_FAST_ATTENTION=0``.
In fp32 the outputs equal upstream's to roundoff (``tests/test_fast_attention.py``).
"""

from __future__ import annotations

import functools
import math
import os
import threading
import types
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ENV_VAR", "clear_mask_buffers", "default_enabled", "disable_fast_attention", "enable_fast_attention",
           "fast_attention_on", "rel_pos_bias", "sdpa_forward"]

#: environment variable that sets the default for new models: "0", "false", "no" or "off" disable it
ENV_VAR = "SAMLIVER_FAST_ATTENTION"


def default_enabled() -> bool:
    """Whether new SAM-family models get the fast path (``$SAMLIVER_FAST_ATTENTION``, default on)."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def _attention_class() -> type:
    from segment_anything.modeling.image_encoder import Attention

    return Attention


def rel_pos_bias(attn: nn.Module, q: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """SAM's decomposed relative-position bias as an additive attention mask.

    Args:
        attn: the upstream ``Attention`` module (its ``rel_pos_h``, ``rel_pos_w``).
        q: queries ``(B, heads, H * W, head_dim)`` (unscaled, as upstream uses them for the bias).
        size: token grid ``(H, W)`` of the window (or of the whole image in a global block).
    Returns:
        ``(B, heads, H * W, H * W)`` in ``q``'s dtype: for query ``(i, j)`` and key ``(k, l)``,
        ``q . Rh[i, k] + q . Rw[j, l]``, the terms upstream's ``add_decomposed_rel_pos`` adds.
        On the CPU without autograd the result lives in a reused buffer (see `clear_mask_buffers`):
        use it before the next call.
    """
    from segment_anything.modeling.image_encoder import get_rel_pos

    h, w = size
    b, heads, tokens, dim = q.shape
    # Upstream's get_rel_pos gives the per-offset embeddings (interpolated where the grid differs from
    # the trained one); the two einsums are the decomposition itself. Unlike upstream's helper, which
    # adds them into an existing attention map, they are summed into a mask of their own here.
    rq = q.reshape(b * heads, h, w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", rq, get_rel_pos(h, h, attn.rel_pos_h)).reshape(b, heads, h, w, h, 1)
    rel_w = torch.einsum("bhwc,wkc->bhwk", rq, get_rel_pos(w, w, attn.rel_pos_w)).reshape(b, heads, h, w, 1, w)
    shape = (b, heads, h, w, h, w)
    buffer = _reusable_buffer(shape, q)
    if buffer is None:
        return (rel_h + rel_w).to(q.dtype).reshape(b, heads, tokens, tokens)
    torch.add(rel_h, rel_w, out=buffer)
    return buffer.view(b, heads, tokens, tokens)


#: largest mask (bytes) kept for reuse between calls; larger ones are allocated per call
REUSE_LIMIT_BYTES = 2 << 30
_local = threading.local()


def _reusable_buffer(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
    """A per-thread buffer for the mask, or None where one must be allocated per call.

    Only on the CPU and without autograd: a fresh mask of a global block (805 MB for one ViT-B
    image at 1024 px) costs more in page faults than filling it, and glibc hands such blocks back
    to the OS on every free; CUDA's caching allocator already reuses memory. At most two shapes are
    kept (a global and a windowed one), most recent first.
    """
    if like.device.type != "cpu" or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return None
    numel = math.prod(shape)
    if numel * like.element_size() > REUSE_LIMIT_BYTES:
        return None
    cache: OrderedDict = _local.__dict__.setdefault("buffers", OrderedDict())
    key = (shape, like.dtype)
    if key not in cache:
        with torch.inference_mode(False):   # a normal tensor: writable both in and outside inference mode
            cache[key] = torch.empty(shape, dtype=like.dtype)
    cache.move_to_end(key)
    while len(cache) > 2:
        cache.popitem(last=False)
    return cache[key]


def clear_mask_buffers() -> None:
    """Free this thread's reused mask buffers (they are otherwise kept until the thread ends)."""
    _local.__dict__.pop("buffers", None)


def sdpa_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The forward bound to an upstream ``Attention``: same input and output as upstream's.

    Args:
        x: tokens ``(B, H, W, C)`` (B = images x windows in a windowed block).
    Returns:
        ``(B, H, W, C)``.
    """
    b, h, w, _ = x.shape
    qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)   # (3, B, heads, L, dim)
    q, k, v = qkv.unbind(0)
    mask = rel_pos_bias(self, q, (h, w)) if self.use_rel_pos else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)        # (B, heads, L, dim)
    return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


def fast_attention_on(module: nn.Module) -> bool:
    """Whether ``module`` (an upstream ``Attention``) runs `sdpa_forward`."""
    bound = module.__dict__.get("forward")
    return isinstance(bound, functools.partial) and bound.func is sdpa_forward


def _attention_modules(module: nn.Module) -> list[nn.Module]:
    cls = _attention_class()
    return [m for m in module.modules() if isinstance(m, cls)]


def enable_fast_attention(module: nn.Module) -> int:
    """Bind `sdpa_forward` to every segment_anything ViT ``Attention`` inside ``module``.

    Returns:
        The number of attention modules that run the fast path (already-enabled ones included).
    """
    found = _attention_modules(module)
    for attn in found:
        if not fast_attention_on(attn):
            # a partial, not types.MethodType: a bound method pickles as getattr(attn, "sdpa_forward"),
            # which fails on load, so models could not be deep-copied or pickled
            attn.forward = functools.partial(sdpa_forward, attn)
    return len(found)


def disable_fast_attention(module: nn.Module) -> int:
    """Restore upstream's ``forward`` on every ViT ``Attention`` inside ``module``; returns how many there are."""
    found = _attention_modules(module)
    for attn in found:
        if fast_attention_on(attn):
            del attn.__dict__["forward"]
    return len(found)
