"""A reduced (or enlarged) encoder input size for SAM-family checkpoints: a speed/accuracy trade-off.

The ViT's cost grows with the token count, (S / 16)^2, and its global-attention blocks with its
square: at 512 px ViT-B has 4x fewer tokens than at 1024 px (16x fewer global-attention pairs), and
the low-res mask logits are S / 4 pixels wide (128 instead of 256), so masks are coarser. SAM was
trained at 1024 px: expect lower accuracy without fine-tuning at the new size. ``load_model(name, input_size=512)`` builds the
model at that size and adapts the checkpoint's two size-dependent tensor kinds here:

- ``image_encoder.pos_embed`` ``(1, 64, 64, C)``: resized bicubically to ``(1, S/16, S/16, C)``
  (SAMed, SAM-Med2D do the same for 512 px);
- ``rel_pos_h`` / ``rel_pos_w`` ``(2 * 64 - 1, head_dim)`` of the global-attention blocks: resized
  linearly to ``2 * S/16 - 1`` rows, exactly as segment_anything's ``get_rel_pos`` interpolates them
  at run time when the grid differs (so storing them resized changes nothing numerically). The
  windowed blocks' tables depend on the window (14), not the image, and stay as they are.

The prompt encoder and mask decoder hold nothing size-dependent (the dense positional encoding is
computed from the grid), so everything else loads unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["resize_state_dict"]


def _resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(1, h, w, C)`` absolute position embedding -> ``(1, grid[0], grid[1], C)`` (bicubic)."""
    out = F.interpolate(pos.permute(0, 3, 1, 2).float(), size=grid, mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1).to(pos.dtype).contiguous()


def _resize_rel_pos(table: torch.Tensor, rows: int) -> torch.Tensor:
    """``(L, head_dim)`` relative-position table -> ``(rows, head_dim)``, linear as ``get_rel_pos`` does."""
    out = F.interpolate(table.float().T[None], size=rows, mode="linear")[0].T
    return out.to(table.dtype).contiguous()


def resize_state_dict(state_dict: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` (official ``Sam`` keys) with its size-dependent tensors resized to ``module``'s.

    Only ``pos_embed`` and ``rel_pos_h/w`` are touched, and only where their shapes differ from the
    module's; any other mismatch is left for the strict load to report.
    """
    expected = module.state_dict()
    out = dict(state_dict)
    for key, value in state_dict.items():
        want = expected.get(key)
        if want is None or want.shape == value.shape:
            continue
        if key.endswith("image_encoder.pos_embed") and value.ndim == 4 and value.shape[-1] == want.shape[-1]:
            out[key] = _resize_pos_embed(value, tuple(want.shape[1:3]))
        elif key.rsplit(".", 1)[-1] in ("rel_pos_h", "rel_pos_w") and value.ndim == 2 \
                and value.shape[1] == want.shape[1]:
            out[key] = _resize_rel_pos(value, want.shape[0])
    return out
