"""One training step per kind of model, as an ``nn.Module`` whose ``forward(batch)`` returns the loss.

Two kinds, chosen by what the adapted model exposes (`step_kind`), never by strategy name:

- ``"prompted"`` (`PromptedStep`): the model decodes prompts. Each slice's objects get prompts
  simulated from their masks (`samliver.training.prompting`), optionally followed by corrective
  clicks; the decoder's masks are scored with `MaskLoss`. With ``text_prompts`` enabled, a fraction
  ``prob`` of slices are prompted by class text instead, through ``model.text_prompts``.
- ``"head"`` (`HeadStep`): the model carries a prompt-free ``task_head`` (the ``decoder`` strategy with
  ``head: multiclass``); its class logits are scored with a multi-class Dice-CE.

The step is the module Accelerate prepares (DDP needs the gradients' forward to run through its
wrapper). A batch brings either model ``pixels`` (``(B, D, 3, S, S)``, D = 1 for 2D models)
or precomputed ``image_embeddings`` (frozen encoders), so the step encodes only when it must.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from samliver.models.base import ImageEmbedding, prompt_tensor

from samliver.prompts import Prompts

from .config import ConfigError, TrainConfig
from .losses import MaskLoss, head_loss
from .prompting import ClickPlan, PromptSimulator, TextPlan, corrective_prompts


def step_kind(model: nn.Module) -> str:
    """``"head"`` for a model with a prompt-free ``task_head``, else ``"prompted"``."""
    return "head" if getattr(model, "task_head", None) is not None else "prompted"


def embed(model: nn.Module, batch: dict[str, Any]) -> ImageEmbedding:
    """The `ImageEmbedding` of the B slices of ``batch`` (the centre slice of each stack)."""
    if "image_embeddings" in batch:
        return ImageEmbedding(batch["image_embeddings"], batch.get("high_res_features"))
    pixels = batch["pixels"]
    if pixels.ndim == 4:
        return model.encode(pixels)
    n, depth = pixels.shape[:2]
    emb = model.encode(pixels.flatten(0, 1))                        # n * D images, stack after stack
    centre = torch.arange(n, device=pixels.device) * depth + depth // 2
    hi = None if emb.high_res_features is None else tuple(f[centre] for f in emb.high_res_features)
    return ImageEmbedding(emb.image_embeddings[centre], hi)


def _zero_loss(module: nn.Module) -> torch.Tensor:
    """A zero that still reaches every trainable parameter (a batch without objects must not leave
    one process out of the gradient all-reduce)."""
    params = [p for p in module.parameters() if p.requires_grad]
    return sum(p.sum() for p in params) * 0.0 if params else torch.zeros(())


class PromptedStep(nn.Module):
    """Prompts from ground truth -> decoder masks -> `MaskLoss` (see the module docstring).

    The prompts are drawn by ``self.prompter`` in the DataLoader (`samliver.training.data.TrainItems`),
    so the step reads nothing back from the device except the corrective rounds' predictions; prompts
    go to the device with non-blocking copies (`samliver.models.base.prompt_tensor`). Each slice's loss
    counts once per object and round.
    """

    def __init__(self, model: nn.Module, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.settings = config.prompts
        self.loss = MaskLoss(config.loss)
        text_prob, text_classes = 0.0, ()
        if config.text_prompts.enabled:
            text_prob, text_classes = config.text_prompts.prob, text_training_classes(model, config)
        self.prompter = PromptSimulator(config.prompts, text_prob, text_classes)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``batch`` from `samliver.training.data.collate_train` with ``prompt_plans``; returns ``loss`` and
        ``objects`` (count)."""
        if "prompt_plans" not in batch:
            raise ValueError("PromptedStep needs batches whose items were prompted in the loader: pass the "
                             "step's prompter to build_train_loader")
        emb = embed(self.model, batch)
        size = tuple(int(s) for s in batch["label"].shape[-2:])
        total, weight = None, 0
        for b, plan in enumerate(batch["prompt_plans"]):
            if isinstance(plan, TextPlan):
                loss_sum, count = self._text_loss(emb.select(b), plan, size)
            elif isinstance(plan, ClickPlan):
                loss_sum, count = self._click_loss(emb.select(b), plan, batch["objects"][b, :len(plan.masks)], size)
            else:
                continue
            total = loss_sum if total is None else total + loss_sum
            weight += count
        if total is None:
            return {"loss": _zero_loss(self), "objects": torch.zeros((), device=emb.image_embeddings.device)}
        # torch.full, not torch.tensor: no host-to-device copy
        return {"loss": total / weight, "objects": torch.full((), float(weight), device=total.device)}

    def _click_loss(self, emb: ImageEmbedding, plan: ClickPlan, masks: torch.Tensor,
                    size: tuple[int, int]) -> tuple[torch.Tensor, int]:
        """Mask losses of one slice's K objects ``masks`` ``(K, H, W)`` in the initial round and each
        corrective round, each weighted by K. Returns ``(weighted sum, K x rounds)``."""
        prompts, rounds, total = plan.prompts, 1 + self.settings.corrective_clicks, None
        rng = copy.deepcopy(plan.rng)            # the same batch twice gives the same clicks
        for round_ in range(rounds):
            single_click = prompts.boxes is None and prompts.points is not None and prompts.points.shape[1] == 1
            multimask = self.settings.multimask and single_click
            out = self.model.decode(emb, prompts, size, multimask=multimask)
            logits = self.model.postprocess(out.low_res_logits, size)                  # (K, M, H, W)
            loss = self.loss(logits, masks, out.iou_scores) * len(masks)
            total = loss if total is None else total + loss
            if round_ < rounds - 1:
                best = out.iou_scores.argmax(dim=1)
                pick = torch.arange(len(masks), device=best.device)
                # The one read-back: the next click depends on this round's error.
                predicted = (logits[pick, best] > 0).detach().cpu().numpy()
                low_res = out.low_res_logits[pick, best][:, None].detach().float().cpu().numpy()
                prompts = corrective_prompts(prompts, predicted, plan.masks, low_res, rng)
        return total, len(masks) * rounds

    def _text_loss(self, emb: ImageEmbedding, plan: TextPlan, size: tuple[int, int]) -> tuple[torch.Tensor, int]:
        """Mask loss of one slice prompted by class text: tokens from the text projection (with
        gradients), the whole class region as each query's target. Returns ``(loss x Q, Q)``."""
        prompts = Prompts(tokens=self.model.text_prompts(plan.texts), labels=plan.labels)
        out = self.model.decode(emb, prompts, size, multimask=False)
        logits = self.model.postprocess(out.low_res_logits, size)
        truth = prompt_tensor(plan.targets, logits.device)
        return self.loss(logits, truth, out.iou_scores) * len(plan.texts), len(plan.texts)


class HeadStep(nn.Module):
    """Prompt-free head logits -> multi-class Dice-CE against the label map."""

    def __init__(self, model: nn.Module, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.loss = head_loss(config.loss)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        label = batch["label"]                                                # (B, H, W)
        logits = self.model.task_head(embed(self.model, batch))                 # (B, K, h, w)
        logits = self.model.postprocess(logits, tuple(int(s) for s in label.shape[-2:]))
        loss = self.loss(logits.float(), label[:, None])
        return {"loss": loss, "objects": torch.tensor(float(label.shape[0]), device=loss.device)}


#: step kind -> the module that trains it
STEPS: dict[str, type[nn.Module]] = {"prompted": PromptedStep, "head": HeadStep}


def make_step(model: nn.Module, config: TrainConfig) -> nn.Module:
    """The training step module for ``model`` (by `step_kind`)."""
    kind = step_kind(model)
    if config.text_prompts.enabled and kind != "prompted":
        raise ConfigError(f"text_prompts: method {config.method!r} trains a prompt-free head; text prompts need "
                          "a promptable mask decoder (e.g. decoder with head: sam, lora, full)")
    return STEPS[kind](model, config)


def text_training_classes(model: nn.Module, config: TrainConfig) -> tuple:
    """Attach a new trainable text projection to ``model`` (or keep the one a continued adapter brought,
    if made with the same tower and descriptions); returns its classes among ``config.targets``."""
    from samliver.prompts.clip_text import CLASS_LABELS, TextTowerSpec, attach_text_prompts, is_trained_on

    t = config.text_prompts
    tower = TextTowerSpec(t.model, t.checkpoint, t.seed)
    prompter = getattr(model, "text_prompts", None)
    if prompter is None:
        prompter = attach_text_prompts(model, tower, t.descriptions, t.num_tokens, t.hidden)
    elif not is_trained_on(prompter, tower, t.descriptions):
        raise ConfigError(f"text_prompts: the adapter {config.adapter} brings a text projection made with another "
                          "tower or other descriptions; match them in text_prompts or start without --adapter")
    wanted = {CLASS_LABELS[name] for name in config.targets if name in CLASS_LABELS}
    return tuple(c for c in prompter.classes if c.label in wanted)


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute each image-encoder block in the backward pass instead of keeping its activations
    (for 1024-pixel training). Works for every encoder `samliver.adapters.depth3d.encoder_blocks`
    knows (SAM ViT, SAM 2 Hiera); forward hooks on the blocks (depth adapters) still run.

    Returns:
        The number of blocks wrapped.
    """
    from samliver.adapters.depth3d import encoder_blocks

    blocks = encoder_blocks(model).blocks
    for block in blocks:
        block.forward = _checkpointed(block.forward)
    return len(blocks)


def _checkpointed(forward):
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)
    return run
