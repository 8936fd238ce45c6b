"""The injected layer of the ``depth3d`` strategy: a bottleneck adapter that mixes each slice's
tokens with the same tokens of its neighbours in a stack of D adjacent slices.

The encoder sees a batch of ``n_stacks * D`` images laid out stack after stack (slice order
inside a stack = anatomical order). After an encoder block, the adapter adds

    up(GELU(conv3d_depth(down(y))))        to the block's output y of shape (n_stacks * D, H, W, C),

where ``conv3d_depth`` is a 3D convolution over ``(depth, row, column)`` with kernel
``(kernel_depth, k, k)`` (k = 1 or 3), zero-padded inside the stack. With ``up`` initialised to
zero the adapter adds exactly zero, so the adapted encoder equals the base encoder at init.

The block itself is not modified or replaced: `attach` registers the adapter as the block's
child ``depth_adapter`` (so its parameters are named ``...blocks.<i>.depth_adapter.*`` and the
base weights keep their names) and a forward hook that adds its output.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import AdapterError

#: name of the adapter as a child of the encoder block
ADAPTER_NAME = "depth_adapter"


class DepthAdapter(nn.Module):
    """Bottleneck adapter with a convolution across the depth of a slice stack.

    Args:
        dim: channels C of the block output it adapts.
        bottleneck: channels r of the bottleneck.
        depth: slices D per stack; the batch must be a multiple of D.
        kernel_depth: kernel extent across slices (odd).
        kernel_spatial: kernel extent across rows/columns (odd; 1 = depth-only mixing).
        zero_init: zero the up-projection, so the adapter adds exactly zero at init.

    Parameters (``r = bottleneck``, ``kd = kernel_depth``, ``ks = kernel_spatial``):
    ``down`` Linear(C, r), ``conv`` Conv3d(r, r, (kd, ks, ks)), ``up`` Linear(r, C) (all with bias):
    ``C*r + r + r*r*kd*ks*ks + r + r*C + C`` scalars.
    """

    def __init__(self, dim: int, bottleneck: int, depth: int, kernel_depth: int = 3,
                 kernel_spatial: int = 1, zero_init: bool = True) -> None:
        super().__init__()
        self.depth = int(depth)
        self.down = nn.Linear(dim, bottleneck)
        self.conv = nn.Conv3d(bottleneck, bottleneck, kernel_size=(kernel_depth, kernel_spatial, kernel_spatial),
                              padding=(kernel_depth // 2, kernel_spatial // 2, kernel_spatial // 2))
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim)
        if zero_init:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``(n_stacks * D, H, W, C)`` -> the residual to add, same shape."""
        n, h, w, _ = x.shape
        d = self.depth
        if n % d:
            raise AdapterError(f"depth3d: the encoder got a batch of {n} images, but the model's stack_depth is {d}; "
                               f"encode stacks of {d} adjacent slices, n_stacks * {d} images in all")
        y = self.down(x)                                                  # (n*D, H, W, r) with n = n_stacks
        r = y.shape[-1]
        y = y.reshape(n // d, d, h, w, r).permute(0, 4, 1, 2, 3)          # (n, r, D, H, W)
        y = self.act(self.conv(y))
        y = y.permute(0, 2, 3, 4, 1).reshape(n, h, w, r)                  # (n*D, H, W, r)
        return self.up(y)


def _add_adapter_output(block: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of an adapted block: ``y -> y + block.depth_adapter(y)``."""
    return output + getattr(block, ADAPTER_NAME)(output)


def attach(block: nn.Module, adapter: DepthAdapter) -> None:
    """Make ``adapter`` the child ``depth_adapter`` of ``block`` and add its output to the block's.

    ``block`` maps tokens to tokens laid out ``(B, H, W, C)`` (segment_anything ViT ``Block``,
    transformers ``Sam2MultiScaleBlock``); it runs unmodified.
    """
    if hasattr(block, ADAPTER_NAME):
        raise AdapterError(f"depth3d: {type(block).__name__} already holds a depth adapter; apply depth3d once")
    block.add_module(ADAPTER_NAME, adapter)
    block.register_forward_hook(_add_adapter_output)

