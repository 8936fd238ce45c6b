"""CLIP text prompts: an open_clip text tower (`samliver.prompts.clip_tower`) encodes class
descriptions ("liver", "liver tumor", "hepatic lesion", ...), and a trained `TextProjection` maps each
embedding to T extra sparse tokens of the mask decoder (`Prompts.tokens`).

- `TextPrompter`: attached to a `PromptableSegmenter` as ``model.text_prompts`` (so its projection
  trains with the model and is saved with the adapter, see `samliver.adapters.saving`): the tower it
  was trained with, the class descriptions and their embeddings, and the projection.
- `attach_text_prompts(model, tower, descriptions)`: a new, trainable prompter (training).
- `text_tokens(model, texts)`: ``(N, T, C)`` tokens and class labels for one object per text;
  `text_slice_prompts` the same objects on many slices. Both raise PromptError for a model without
  a trained projection.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from samliver.errors import PromptError

from .clip_tower import (TINY_TOWER, ClipTextTower, TextTowerError, TextTowerSpec, TextTruncationWarning,
                         check_text, check_tower_source, text_tower)

__all__ = ["CLASS_LABELS", "TEXT_PREFIX", "TINY_TOWER", "ClipTextTower", "TextClass", "TextProjection",
           "TextPrompter", "TextTowerError", "TextTowerSpec", "TextTruncationWarning", "attach_text_prompts",
           "check_tower_source", "text_classes", "text_prompter", "text_slice_prompts", "text_tokens", "text_tower"]

#: class name -> label written for its objects (the LiTS/MSD convention: 1 liver, 2 tumour)
CLASS_LABELS = {"liver": 1, "tumor": 2, "tumour": 2}
#: key prefix of the text prompter's tensors in ``model.state_dict()`` and in saved adapters
TEXT_PREFIX = "text_prompts."


class TextProjection(nn.Module):
    """CLIP text embeddings ``(N, E)`` -> sparse prompt tokens ``(N, T, C)``.

    LayerNorm, then a two-layer MLP (Linear, GELU, Linear) to ``T * C`` values. Written here: no
    library maps text embeddings to SAM's decoder tokens. C is the decoder's token width (256 for
    SAM / SAM 2).
    """

    def __init__(self, embed_dim: int, width: int, num_tokens: int = 2, hidden: int = 256) -> None:
        super().__init__()
        self.num_tokens, self.width = int(num_tokens), int(width)
        self.mlp = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, self.num_tokens * self.width))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.mlp(embeddings).reshape(embeddings.shape[0], self.num_tokens, self.width)


@dataclasses.dataclass(frozen=True)
class TextClass:
    """One class the projection was trained on: its ``name``, the ``label`` its objects are written
    with, and its ``descriptions`` (the first is the one evaluation uses)."""

    name: str
    label: int
    descriptions: tuple[str, ...]


def text_classes(descriptions: Mapping[str, Sequence[str]]) -> tuple[TextClass, ...]:
    """``{"liver": [...], "tumor": [...]}`` -> `TextClass` per class; PromptError for an unknown class
    name or an empty description list."""
    if not descriptions:
        raise PromptError("text descriptions: need at least one class (liver, tumor)")
    out = []
    for name, texts in descriptions.items():
        if name not in CLASS_LABELS:
            raise PromptError(f"text descriptions: unknown class {name!r}; known: {', '.join(CLASS_LABELS)}")
        if isinstance(texts, str) or not texts:
            raise PromptError(f"text descriptions of {name!r}: need a non-empty list of strings, got {texts!r}")
        out.append(TextClass(name, CLASS_LABELS[name], tuple(check_text(t) for t in texts)))
    return tuple(out)


class TextPrompter(nn.Module):
    """Text -> decoder tokens for one model (``model.text_prompts``).

    Holds the `TextProjection` (trained), the tower spec it was trained with, the classes and the
    embeddings of all their descriptions (``known_embeddings`` ``(K, E)``, saved with it). Those texts
    need no tower; any other text is encoded by the tower, built on first need and checked to
    reproduce the saved embeddings (else TextTowerError).
    """

    def __init__(self, tower: TextTowerSpec, classes: Sequence[TextClass], embed_dim: int, width: int,
                 num_tokens: int = 2, hidden: int = 256) -> None:
        super().__init__()
        self.tower_spec, self.classes = tower, tuple(classes)
        self.embed_dim, self.hidden = int(embed_dim), int(hidden)
        self.projection = TextProjection(embed_dim, width, num_tokens, hidden)
        self.known_texts = tuple(dict.fromkeys(t for c in self.classes for t in c.descriptions))
        self.register_buffer("known_embeddings", torch.zeros(len(self.known_texts), self.embed_dim))
        self._tower_checked = False

    @classmethod
    def create(cls, tower: TextTowerSpec, descriptions: Mapping[str, Sequence[str]], width: int,
               num_tokens: int = 2, hidden: int = 256) -> "TextPrompter":
        """A new (untrained) prompter: builds the tower and embeds every description once."""
        built = text_tower(tower)
        prompter = cls(tower, text_classes(descriptions), built.embed_dim, width, num_tokens, hidden)
        prompter.known_embeddings.copy_(built.encode(prompter.known_texts))
        prompter._tower_checked = True
        return prompter

    def config(self) -> dict:
        """What rebuilds it (recorded as ``text_prompts`` in ``adapter_config.json``)."""
        return {"tower": dataclasses.asdict(self.tower_spec),
                "classes": [{"name": c.name, "label": c.label, "descriptions": list(c.descriptions)}
                            for c in self.classes],
                "embed_dim": self.embed_dim, "width": self.projection.width,
                "num_tokens": self.projection.num_tokens, "hidden": self.hidden}

    @classmethod
    def from_config(cls, config: Mapping) -> "TextPrompter":
        try:
            classes = [TextClass(c["name"], int(c["label"]), tuple(c["descriptions"])) for c in config["classes"]]
            return cls(TextTowerSpec(**config["tower"]), classes, int(config["embed_dim"]), int(config["width"]),
                       int(config["num_tokens"]), int(config["hidden"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise TextTowerError(f"text_prompts record unreadable ({type(exc).__name__}: {exc})") from None

    def tower(self) -> ClipTextTower:
        """The text tower, checked once against the saved embeddings."""
        built = text_tower(self.tower_spec)
        if not self._tower_checked and self.known_texts:
            again = built.encode(self.known_texts[:1])[0]
            if built.embed_dim != self.embed_dim or \
                    (again - self.known_embeddings[0].float().cpu()).abs().max() > 1e-3:
                raise TextTowerError(f"{self.tower_spec.describe()} does not reproduce the embedding of "
                                     f"{self.known_texts[0]!r} the text projection was trained with")
            self._tower_checked = True
        return built

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP embeddings ``(N, E)`` of ``texts`` on the projection's device (no gradient)."""
        texts = [check_text(t) for t in texts]
        index = {t: i for i, t in enumerate(self.known_texts)}
        other = [t for t in texts if t not in index]
        fresh = dict(zip(other, self.tower().encode(other))) if other else {}
        rows = [self.known_embeddings[index[t]].float().cpu() if t in index else fresh[t] for t in texts]
        weight = self.projection.mlp[1].weight
        return torch.stack(rows).to(device=weight.device, dtype=weight.dtype)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Decoder tokens ``(N, T, C)`` for N texts (with gradients to the projection)."""
        return self.projection(self.embed(texts))

    def label_for(self, text: str) -> int | None:
        """The label of the class one of whose descriptions is ``text`` (case-insensitive), else None."""
        wanted = check_text(text).lower()
        return next((c.label for c in self.classes if wanted in (d.lower() for d in c.descriptions)), None)

    def description(self, label: int) -> str | None:
        """The first description of the class written with ``label``, or None."""
        return next((c.descriptions[0] for c in self.classes if c.label == label), None)


def decoder_width(model: nn.Module) -> int:
    """C of the mask decoder's tokens: the image embedding's channels (SAM's two-way transformer
    attends between the two, so they share one width)."""
    from samliver.adapters.task_head import probe_encode

    return int(probe_encode(model).image_embeddings[1])


def attach_text_prompts(model: nn.Module, tower: TextTowerSpec, descriptions: Mapping[str, Sequence[str]],
                        num_tokens: int = 2, hidden: int = 256) -> TextPrompter:
    """A new trainable `TextPrompter` as ``model.text_prompts`` (on the model's device); returns it."""
    prompter = TextPrompter.create(tower, descriptions, decoder_width(model), num_tokens, hidden)
    _install(model, prompter)
    return prompter


def _install(model: nn.Module, prompter: TextPrompter) -> None:
    """``model.text_prompts = prompter``: on the model's device, the projection in its dtype (the saved
    embeddings stay float32), trainable."""
    param = next(model.parameters())
    prompter.to(device=param.device)
    prompter.projection.to(dtype=param.dtype).requires_grad_(True)
    model.text_prompts = prompter


def text_prompter(model: nn.Module) -> TextPrompter:
    """``model.text_prompts``; PromptError saying how to train one when the model has none."""
    prompter = getattr(model, "text_prompts", None)
    if not isinstance(prompter, TextPrompter):
        name = getattr(getattr(model, "spec", None), "name", type(model).__name__)
        raise PromptError(f"{name}: model has no trained text projection; train one with train_adapter.py "
                          "--method METHOD --text-prompts and load the model with that adapter")
    return prompter


def text_tokens(model: nn.Module, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """One object per text: tokens ``(N, T, C)`` float32 and labels ``(N,)`` uint8 (the class whose
    description the text is, else 1). PromptError when the model has no trained text projection."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    prompter = text_prompter(model)
    if not texts:
        raise PromptError("text: need at least one description")
    labels = np.array([prompter.label_for(t) or 1 for t in texts], np.uint8)
    with torch.no_grad():
        tokens = prompter(texts).float().cpu().numpy()
    return tokens, labels


def text_slice_prompts(model: nn.Module, texts: Sequence[str], slices: Sequence[int],
                       labels: Sequence[int] | None = None) -> dict:
    """``{z: Prompts}``: the same text objects on each slice of ``slices`` (a text carries no location).

    ``labels``: once for all texts or once per text; default: the class each text describes (else 1).
    """
    from .types import Prompts

    tokens, default = text_tokens(model, texts)
    if labels:
        if len(labels) not in (1, len(tokens)):
            raise PromptError(f"--label: give it once or once per --text ({len(tokens)}), got {len(labels)}")
        default = np.broadcast_to(np.asarray(labels), (len(tokens),)).copy()
    batch = Prompts(tokens=tokens, labels=default)
    return {int(z): batch for z in slices}


# ------------------------------------------------------------------------------ adapter files

def split_text_tensors(tensors: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """``(other tensors, text prompter tensors without their prefix)`` of an adapter's tensors."""
    rest = {k: v for k, v in tensors.items() if not k.startswith(TEXT_PREFIX)}
    text = {k[len(TEXT_PREFIX):]: v for k, v in tensors.items() if k.startswith(TEXT_PREFIX)}
    return rest, text


def text_prompts_record(model: nn.Module) -> tuple[dict | None, dict[str, torch.Tensor]]:
    """``(config, tensors)`` to save with an adapter: the prompter's `TextPrompter.config` and its whole
    state (projection and description embeddings) under `TEXT_PREFIX`; ``(None, {})`` without one."""
    prompter = getattr(model, "text_prompts", None)
    if not isinstance(prompter, TextPrompter):
        return None, {}
    state = {TEXT_PREFIX + k: v.detach().cpu().contiguous() for k, v in prompter.state_dict().items()}
    return prompter.config(), state


def restore_text_prompts(model: nn.Module, config: Mapping, tensors: Mapping[str, torch.Tensor],
                         where: str = "adapter") -> TextPrompter:
    """Attach the prompter saved as ``config`` + ``tensors`` (prefix stripped) to ``model``, strictly."""
    prompter = TextPrompter.from_config(config)
    expected = prompter.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    bad = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad:
        raise TextTowerError(f"{where}: text projection tensors do not fit its record (missing {missing[:2]}, "
                             f"unexpected {unexpected[:2]}, wrong shape {bad[:2]})")
    prompter.load_state_dict(dict(tensors))
    _install(model, prompter)
    return prompter


def is_trained_on(prompter: TextPrompter, tower: TextTowerSpec, descriptions: Mapping[str, Sequence[str]]) -> bool:
    """Whether ``prompter`` uses ``tower`` and exactly these class descriptions."""
    return prompter.tower_spec == tower and prompter.classes == text_classes(descriptions)
