"""Training losses by name, from MONAI (plus torch's BCE-with-logits, which MONAI does not wrap).

Prompted training (`MaskLoss`): a weighted sum of per-object mask losses — ``dice`` (MONAI
``DiceLoss``), ``bce``, ``focal`` (MONAI ``FocalLoss``), ``tversky`` (MONAI ``TverskyLoss``, alpha 0.3 /
beta 0.7, weighting misses over false positives for small lesions) — plus ``iou``: the MSE between
the decoder's predicted IoU and the real IoU of its mask. With several masks per object (multimask
output), each object's loss is the lowest over its masks, as in SAM.

Prompt-free heads (`head_loss`): multi-class ``dice_ce`` (MONAI ``DiceCELoss``) or ``dice_focal``
(MONAI ``DiceFocalLoss``), softmax over classes, one-hot targets.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss, FocalLoss, TverskyLoss
from torch import nn

from .config import LossSettings

Term = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _per_object(loss: nn.Module) -> Term:
    """A MONAI loss with ``reduction="none"`` as ``(logits, target) (K, 1, H, W) -> (K,)``."""
    def term(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return loss(logits, target).reshape(logits.shape[0], -1).mean(dim=1)
    return term


def _bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(dim=1)


#: mask loss name -> a builder of ``(logits, target) (K, 1, H, W) -> per-object loss (K,)``
MASK_TERMS: dict[str, Callable[[], Term]] = {
    "dice": lambda: _per_object(DiceLoss(sigmoid=True, reduction="none")),
    "bce": lambda: _bce,
    "focal": lambda: _per_object(FocalLoss(gamma=2.0, reduction="none")),
    "tversky": lambda: _per_object(TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7, reduction="none")),
}

#: head loss name -> builder of a MONAI multi-class loss on ``(B, K, H, W)`` logits and ``(B, 1, H, W)`` labels
HEAD_LOSSES: dict[str, Callable[[], nn.Module]] = {
    "dice_ce": lambda: DiceCELoss(to_onehot_y=True, softmax=True),
    "dice_focal": lambda: DiceFocalLoss(to_onehot_y=True, softmax=True),
}


class MaskLoss(nn.Module):
    """Weighted mask losses for N prompted objects (see the module docstring)."""

    def __init__(self, settings: LossSettings) -> None:
        super().__init__()
        self.weights = {name: float(getattr(settings, name)) for name in MASK_TERMS if getattr(settings, name) > 0}
        self.terms = {name: MASK_TERMS[name]() for name in self.weights}
        self.iou_weight = float(settings.iou)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, iou_pred: torch.Tensor) -> torch.Tensor:
        """Mean loss over objects.

        Args:
            logits: ``(N, M, H, W)`` mask logits (M masks per object).
            target: ``(N, H, W)`` bool ground truth.
            iou_pred: ``(N, M)`` the decoder's predicted IoU of each mask.
        """
        n, m = logits.shape[:2]
        flat = logits.float().reshape(n * m, 1, *logits.shape[-2:])
        truth = target[:, None].expand(n, m, *target.shape[-2:]).reshape(n * m, 1, *target.shape[-2:]).float()
        per_mask = sum(w * self.terms[name](flat, truth) for name, w in self.weights.items()).reshape(n, m)
        best = per_mask.argmin(dim=1)
        pick = torch.arange(n, device=logits.device)
        loss = per_mask[pick, best]
        if self.iou_weight > 0:
            chosen = logits[pick, best].detach() > 0
            inter = (chosen & target).flatten(1).sum(1).float()
            union = (chosen | target).flatten(1).sum(1).float().clamp_min(1.0)
            loss = loss + self.iou_weight * (iou_pred[pick, best].float() - inter / union) ** 2
        return loss.mean()


def head_loss(settings: LossSettings) -> nn.Module:
    """The prompt-free head's multi-class loss named by ``settings.head``."""
    return HEAD_LOSSES[settings.head]()
