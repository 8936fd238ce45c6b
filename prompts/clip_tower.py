"""The open_clip text tower behind CLIP text prompts: built once per process, frozen, on the CPU,
never downloading, with a per-text embedding cache.

A `TextTowerSpec` names it: an open_clip model name, a ``hf-hub:``/``local-dir:`` model, or a
model-config ``.json`` file, with weights from a local file, an open_clip pretrained tag, or
``"random"`` (seeded random weights, for tests). ``hf-hub:`` models and tags are read from the local
Hugging Face cache only (a cached ``hf-hub:`` config without its weights is refused, not built with
random weights as open_clip would). The bundled config ``samliver-tiny-text`` (``configs/clip/``:
64 wide, 2 layers, a 32-token context) is the test tower.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from samliver.errors import PromptError, SamliverError

#: the bundled tiny tower config (tests), registered with open_clip on first use
TINY_TOWER = "samliver-tiny-text"
#: the weights files open_clip's ``hf-hub:`` loader looks for (open_clip.constants HF_SAFE_WEIGHTS_NAME,
#: HF_WEIGHTS_NAME); without one in the cache it only logs a warning and builds random weights
HF_HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
#: weights file suffixes open_clip's ``local-dir:`` loader looks for in the folder
LOCAL_DIR_WEIGHTS = (".safetensors", ".bin", ".pth")


class TextTowerError(SamliverError, ValueError):
    """A text tower that cannot be built offline, or one that differs from the tower a projection was trained with."""


class TextTruncationWarning(UserWarning):
    """A text prompt longer than the tower's context was truncated."""


@dataclasses.dataclass(frozen=True)
class TextTowerSpec:
    """Which text tower: ``model`` (open_clip name, ``hf-hub:org/repo``, ``local-dir:PATH`` or a
    model-config ``.json`` file), ``checkpoint`` (None for ``hf-hub:``/``local-dir:`` models, which
    carry their weights; else a local weights file, an open_clip pretrained tag, or ``"random"``),
    ``seed`` (random weights only)."""

    model: str
    checkpoint: str | None = None
    seed: int = 0

    def describe(self) -> str:
        return f"text tower {self.model!r} (checkpoint {self.checkpoint or 'its own weights'})"


class ClipTextTower:
    """A frozen open_clip text encoder on the CPU with a per-text embedding cache.

    Attributes:
        context_length: tokens the tokenizer keeps (longer texts are truncated, with a warning).
        embed_dim: E, the width of the (L2-normalised) text embeddings.
    """

    def __init__(self, spec: TextTowerSpec, model: nn.Module, tokenizer) -> None:
        self.spec, self.model, self.tokenizer = spec, model.eval().requires_grad_(False), tokenizer
        self.context_length = int(tokenizer.context_length)
        self._cache: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            self.embed_dim = int(self.model.encode_text(self.tokenizer(["x"])).shape[-1])

    def token_count(self, text: str) -> int:
        """Tokens of ``text`` before truncation, special tokens included: tokenised with room to spare,
        so the last id is padding, and the trailing run of that id is cut (the pad id differs between
        tokenizers: 0 for open_clip's own, 1 for SigLIP's c4 and RoBERTa-style Hugging Face ones)."""
        room = self.context_length + len(text.encode("utf-8")) + 8
        ids = self.tokenizer([text], context_length=room)[0]
        kept = torch.nonzero(ids != ids[-1])
        return int(kept[-1]) + 1 if len(kept) else 0

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings ``(N, E)`` float32 (L2-normalised, CPU) of ``texts``; each text is encoded once.

        Warns (`TextTruncationWarning`) when a text is longer than the context, naming it and the context.
        """
        texts = [check_text(t) for t in texts]
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for text in todo:
            count = self.token_count(text)
            if count > self.context_length:
                shown = text if len(text) <= 60 else text[:57] + "..."
                warnings.warn(f"text prompt {shown!r} is {count} tokens long, more than the {self.spec.model} "
                              f"text tower's context of {self.context_length} tokens; it was truncated to "
                              f"{self.context_length} tokens", TextTruncationWarning, stacklevel=3)
        if todo:
            with torch.no_grad():
                emb = self.model.encode_text(self.tokenizer(todo), normalize=True).float()
            self._cache.update({t: e.clone() for t, e in zip(todo, emb)})
        return torch.stack([self._cache[t] for t in texts]) if texts else torch.zeros(0, self.embed_dim)


def check_text(text: object) -> str:
    """``text`` stripped; PromptError unless it is a non-empty string."""
    if not isinstance(text, str) or not text.strip():
        raise PromptError(f"text: need a non-empty description, got {text!r}")
    return text.strip()


_TOWERS: dict[TextTowerSpec, ClipTextTower] = {}


def text_tower(spec: TextTowerSpec) -> ClipTextTower:
    """The tower of ``spec``, built on first use and shared by the whole process.

    Raises:
        TextTowerError: unknown model, missing weights file, or weights not in the local cache.
    """
    if spec not in _TOWERS:
        _TOWERS[spec] = _build_tower(spec)
    return _TOWERS[spec]


def check_tower_source(spec: TextTowerSpec) -> None:
    """A quick check, without building anything, that ``spec``'s files are here: a plain model name is one
    open_clip knows, a ``.json`` config or weights file exists, a ``hf-hub:`` model is in the local Hugging
    Face cache. (Training calls it before preparing data; `text_tower` still reports any other problem when
    it builds the tower.)

    Raises:
        TextTowerError: naming the unknown model or the missing file.
    """
    model, ckpt = spec.model, spec.checkpoint
    if model.endswith(".json") and not Path(model).is_file():
        raise TextTowerError(f"text tower config {model}: no such file")
    if not model.endswith(".json") and not model.startswith(("hf-hub:", "local-dir:")):
        _check_model_name(spec, model)
    if model.startswith("local-dir:"):
        folder = Path(model.split(":", 1)[1])
        if not (folder / "open_clip_config.json").is_file():
            raise TextTowerError(f"{spec.describe()}: no open_clip_config.json in {folder}")
        if ckpt is None:
            _check_local_weights(spec, folder)
    if model.startswith("hf-hub:"):
        repo = model.split(":", 1)[1]
        if not _in_hub_cache(spec, repo, "open_clip_config.json"):
            raise TextTowerError(f"{spec.describe()}: not in the local Hugging Face cache (samliver never downloads "
                                 f"it); fetch it first, e.g. `huggingface-cli download {repo}`")
        if ckpt is None:
            _check_hub_weights(spec, repo)
    looks_like_file = ckpt is not None and ("/" in ckpt or "\\" in ckpt
                                            or ckpt.endswith((".pt", ".pth", ".bin", ".safetensors")))
    if looks_like_file and not Path(ckpt).is_file():
        raise TextTowerError(f"{spec.describe()}: weights file {ckpt} not found")


def _check_model_name(spec: TextTowerSpec, name: str) -> None:
    """TextTowerError unless ``name`` is an open_clip model (or the bundled tiny config), suggesting close names."""
    import difflib

    import open_clip

    known = list(dict.fromkeys([*open_clip.list_models(), TINY_TOWER]))
    if name in known:
        return
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise TextTowerError(f"{spec.describe()}: unknown open_clip model {name!r} ({hint}see open_clip.list_models(), "
                         "or give hf-hub:, local-dir: or a .json config)")


def _in_hub_cache(spec: TextTowerSpec, repo: str, filename: str) -> bool:
    """Whether ``filename`` of ``repo`` is in the local Hugging Face cache (TextTowerError for a malformed repo id)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        return isinstance(try_to_load_from_cache(repo, filename), str)
    except HFValidationError:
        raise TextTowerError(f"{spec.describe()}: {repo!r} is not a Hugging Face repo id (ORG/NAME)") from None


def _check_hub_weights(spec: TextTowerSpec, repo: str) -> None:
    """TextTowerError unless one of `HF_HUB_WEIGHTS` of ``repo`` is in the local Hugging Face cache."""
    if not any(_in_hub_cache(spec, repo, name) for name in HF_HUB_WEIGHTS):
        raise TextTowerError(f"{spec.describe()}: the local Hugging Face cache has its open_clip_config.json but no "
                             f"weights ({' or '.join(HF_HUB_WEIGHTS)}); fetch them first, e.g. "
                             f"`huggingface-cli download {repo}` (or give checkpoint 'random')")


def _check_local_weights(spec: TextTowerSpec, folder: Path) -> None:
    """TextTowerError unless ``folder`` holds a weights file open_clip's ``local-dir:`` loader would take
    (``*.safetensors``, ``*.bin``, ``*.pth``); without one it only logs a warning and builds random weights."""
    if not any(any(folder.glob(f"*{suffix}")) for suffix in LOCAL_DIR_WEIGHTS):
        patterns = ", ".join("*" + suffix for suffix in LOCAL_DIR_WEIGHTS)
        raise TextTowerError(f"{spec.describe()}: {folder} has open_clip_config.json but no weights file "
                             f"({patterns}); give checkpoint 'random' for random weights")


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Hugging Face Hub access restricted to the local cache while a tower is built (open_clip would
    otherwise download configs, weights and tokenizers; we only read what the user has)."""
    import huggingface_hub.constants as hub

    before = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = before


def _model_name(model: str) -> str:
    """The open_clip name of ``model``, registering the bundled tiny config or a ``.json`` config file."""
    import open_clip

    if model == TINY_TOWER and model not in open_clip.list_models():
        from samliver.configs import ROOT

        open_clip.add_model_config(ROOT / "clip" / f"{TINY_TOWER}.json")
    elif model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise TextTowerError(f"text tower config {model}: no such file")
        open_clip.add_model_config(path)
        if path.stem not in open_clip.list_models():
            raise TextTowerError(f"text tower config {model}: not an open_clip model config "
                                 "(needs embed_dim, vision_cfg and text_cfg)")
        return path.stem
    return model


def _create_kwargs(spec: TextTowerSpec, name: str) -> dict:
    """``open_clip.create_model`` arguments for the weights ``spec.checkpoint`` names."""
    import open_clip

    ckpt = spec.checkpoint
    if ckpt == "random":
        return {"load_weights": False, "pretrained_text": False}
    if name.startswith(("hf-hub:", "local-dir:")):
        if ckpt is not None:
            raise TextTowerError(f"{spec.describe()}: {name.split(':')[0]} models carry their own weights; "
                                 "leave checkpoint empty (or 'random')")
        repo = name.split(":", 1)[1]
        if name.startswith("hf-hub:") and _in_hub_cache(spec, repo, "open_clip_config.json"):  # else open_clip says why
            _check_hub_weights(spec, repo)
        if name.startswith("local-dir:") and Path(repo).is_dir():
            _check_local_weights(spec, Path(repo))
        return {}
    if ckpt is None:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise TextTowerError(f"{spec.describe()}: {name!r} is an architecture; give checkpoint: a local weights "
                             f"file, a pretrained tag in the Hugging Face cache ({tags}), or 'random'")
    if Path(ckpt).is_file():
        return {"pretrained": str(ckpt)}
    cfg = open_clip.get_pretrained_cfg(name, ckpt)
    if not cfg:
        raise TextTowerError(f"{spec.describe()}: {ckpt!r} is neither a file nor a pretrained tag of {name!r}")
    if not cfg.get("hf_hub"):
        raise TextTowerError(f"{spec.describe()}: tag {ckpt!r} downloads from {cfg.get('url')}; download it "
                             "yourself and give the file as checkpoint")
    return {"pretrained": ckpt}


def _build_tower(spec: TextTowerSpec) -> ClipTextTower:
    import open_clip

    name = _model_name(spec.model)
    if not name.startswith(("hf-hub:", "local-dir:")):
        _check_model_name(spec, name)
    kwargs = _create_kwargs(spec, name)
    with _offline(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)  # random weights are a function of the seed (a saved projection needs them)
        try:
            model = open_clip.create_model(name, **kwargs)
            tokenizer = open_clip.get_tokenizer(name)
        except Exception as exc:  # noqa: BLE001  (open_clip / hub / transformers errors: not buildable offline)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TextTowerError(f"{spec.describe()}: cannot build it offline ({reason}); hf-hub models and "
                                 "tags must be in the local Hugging Face cache") from None
    model.visual = None  # only the text tower is used
    return ClipTextTower(spec, model, tokenizer)
