"""CLIP text prompts from a BiomedCLIP-style ``hf-hub:`` model, offline (`samliver.prompts.clip_tower`).

A tiny model shaped like ``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`` (an open_clip
config whose text tower is a Hugging Face BERT with an MLP projection and CLS pooling, a timm ViT
vision tower, weights in ``open_clip_pytorch_model.bin``) and the BERT repo it names are written in
the Hugging Face cache layout into a temporary cache; the samliver tower built from it must equal
open_clip's own model on the same cache. Nothing is downloaded, the user's cache is never read.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import samliver
from samliver.prompts import clip_tower
from samliver.prompts.clip_text import (TextTowerError, TextTowerSpec, TextTruncationWarning, attach_text_prompts,
                                        check_tower_source, text_tokens, text_tower)
from tests.conftest import randomize_

CLIP_REPO = "samliver-test/tiny-biomedclip"            # fake organisation: never clashes with a real cache entry
BERT_REPO = "samliver-test/tiny-pubmedbert"
CONTEXT = 16
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# A tiny WordPiece vocabulary. [PAD] is deliberately not id 0 (RoBERTa-style towers pad with 1, SigLIP's
# c4 tokenizer too), so a token count that assumes "pad == 0" is caught.
WORDS = ["liver", "tumor", "tumour", "hepatic", "lesion", "the", "of", "in", "right", "left", "lobe",
         "large", "small", "hypo", "##dense", "segment", "cyst", "mass", "ct", "scan"]
VOCAB = (["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + list("abcdefghijklmnopqrstuvwxyz")
         + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"])
# BiomedCLIP's open_clip_config.json, shrunk: same keys, tiny sizes.
OPEN_CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 24,
        "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 32},
        "text_cfg": {"hf_model_name": BERT_REPO, "hf_tokenizer_name": BERT_REPO, "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": CONTEXT},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}
TEXTS = ["liver", "liver tumor", "hepatic lesion", "a small hypodense cyst in the right lobe"]
DESCRIPTIONS = {"liver": ["liver", "the liver"], "tumor": ["liver tumor", "hepatic lesion"]}


def _snapshot(cache: Path, repo: str) -> Path:
    """The snapshot folder of ``repo`` in the cache layout (models--ORG--REPO/{refs/main, snapshots/COMMIT})."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    return snapshot


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A temporary Hugging Face cache holding the tiny BiomedCLIP-shaped repo and its BERT repo; yields
    ``(cache, saved CLIP state dict)``. huggingface_hub and transformers read the cache folder from
    ``huggingface_hub.constants`` at call time, but those constants are set from the environment at
    import, so both the environment and the constants are patched (and offline mode forced)."""
    import huggingface_hub.constants as constants
    import open_clip
    from transformers import BertConfig, BertTokenizerFast

    home = tmp_path_factory.mktemp("hf_home")
    cache = home / "hub"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in (("HF_HOME", str(home)), ("HF_HUB_CACHE", str(cache)), ("HF_HUB_OFFLINE", "1")):
            mp.setenv(name, value)
        mp.setattr(constants, "HF_HOME", str(home))
        mp.setattr(constants, "HF_HUB_CACHE", str(cache))
        mp.setattr(constants, "HF_HUB_OFFLINE", True)

        bert = _snapshot(cache, BERT_REPO)
        (home / "wordpiece").mkdir()
        (home / "wordpiece" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
        tokenizer = BertTokenizerFast.from_pretrained(home / "wordpiece", do_lower_case=True)
        assert (tokenizer.vocab_size, tokenizer.pad_token_id) == (len(VOCAB), VOCAB.index("[PAD]"))
        tokenizer.save_pretrained(bert)
        BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=48, max_position_embeddings=32, pad_token_id=VOCAB.index("[PAD]")
                   ).save_pretrained(bert)

        clip = _snapshot(cache, CLIP_REPO)
        (clip / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CONFIG))
        # Config only so far: open_clip builds the whole CLIP with seeded random weights, which become the repo's.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)
            model = open_clip.create_model(f"hf-hub:{CLIP_REPO}", load_weights=False, pretrained_text=False)
        randomize_(model.text, seed=1234, std=0.2)   # BERT's init (std 0.02) leaves CLS outputs of texts too alike
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save(state, clip / open_clip.constants.HF_WEIGHTS_NAME)
        yield cache, state
    for spec in [s for s in clip_tower._TOWERS if s.model.startswith("hf-hub:samliver-test/")]:
        del clip_tower._TOWERS[spec]                # towers built from this temporary cache go with it


@pytest.fixture(scope="module")
def reference(hub):
    """open_clip's own model and tokenizer for the cached repo, built independently of samliver."""
    import open_clip

    model, _, _ = open_clip.create_model_and_transforms(f"hf-hub:{CLIP_REPO}")
    tokenizer = open_clip.get_tokenizer(f"hf-hub:{CLIP_REPO}")
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def tower(hub):
    return text_tower(TextTowerSpec(f"hf-hub:{CLIP_REPO}"))


def test_hf_hub_tower_equals_open_clip_on_the_cached_repo(hub, reference, tower):
    import open_clip
    from open_clip.hf_model import HFTextEncoder
    from open_clip.tokenizer import HFTokenizer

    _, saved = hub
    ref_model, ref_tokenizer = reference
    # open_clip really loaded the cached weights (not a random BERT): its state is the saved one, exactly.
    for key, value in ref_model.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)
    assert isinstance(tower.model.text, HFTextEncoder) and isinstance(tower.tokenizer, HFTokenizer)
    assert tower.context_length == CONTEXT and tower.embed_dim == OPEN_CLIP_CONFIG["model_cfg"]["embed_dim"]
    with torch.no_grad():
        expected = ref_model.encode_text(ref_tokenizer(TEXTS), normalize=True)
    got = tower.encode(TEXTS)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(len(TEXTS)))
    for i in range(len(TEXTS)):
        for j in range(i + 1, len(TEXTS)):
            assert (got[i] - got[j]).abs().max() > 1e-3, (TEXTS[i], TEXTS[j])
    # frozen, text tower only
    assert tower.model.visual is None and not any(p.requires_grad for p in tower.model.parameters())
    # samliver's file-name check agrees with open_clip's (what its hf-hub loader looks for)
    assert set(clip_tower.HF_HUB_WEIGHTS) == {open_clip.constants.HF_SAFE_WEIGHTS_NAME,
                                              open_clip.constants.HF_WEIGHTS_NAME}
    check_tower_source(TextTowerSpec(f"hf-hub:{CLIP_REPO}"))    # the quick check passes too


def test_token_count_and_truncation_warning_with_the_hf_tokenizer(hub, tower):
    from transformers import AutoTokenizer

    bert_tokenizer = AutoTokenizer.from_pretrained(BERT_REPO)  # the BERT repo's own tokenizer, independently
    assert bert_tokenizer.pad_token_id == 1
    for text in TEXTS:
        assert tower.token_count(text) == len(bert_tokenizer(text)["input_ids"]), text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tower.encode(["segment the hepatic lesion"])                    # 6 tokens: no warning
    long_text = "a large hypodense hepatic lesion in the right lobe of the liver " * 2
    count = len(bert_tokenizer(long_text)["input_ids"])
    assert count > CONTEXT
    with pytest.warns(TextTruncationWarning) as record:
        tower.encode([long_text])
    message = str(record[0].message)
    assert f"is {count} tokens long" in message and f"hf-hub:{CLIP_REPO}" in message
    assert f"context of {CONTEXT} tokens; it was truncated to {CONTEXT} tokens" in message


def test_hf_hub_tower_prompts_the_decoder(hub, tower):
    model = samliver.load_model("samliver_tiny", checkpoint="random")
    prompter = attach_text_prompts(model, TextTowerSpec(f"hf-hub:{CLIP_REPO}"), DESCRIPTIONS, num_tokens=3)
    tokens, labels = text_tokens(model, ["liver", "hepatic lesion", "a liver cyst"])
    assert tokens.shape == (3, 3, 96) and tokens.dtype == np.float32       # (N, T, decoder width C)
    assert labels.tolist() == [1, 2, 1]
    with torch.no_grad():
        expected = prompter.projection(tower.encode(["a liver cyst"]))
    np.testing.assert_allclose(tokens[2], expected[0].numpy(), atol=1e-6)
    predictor = samliver.Predictor(model)
    predictor.set_image(np.zeros((48, 40), np.float32))
    pred = predictor.predict(text=["liver", "liver tumor"])
    assert pred.masks.shape == (2, 48, 40) and pred.scores.shape == (2,)


def test_cached_config_without_weights_is_refused(hub):
    """A repo whose weights are not in the cache must not silently become a random tower (open_clip only
    logs a warning and builds one)."""
    cache, _ = hub
    repo = "samliver-test/config-only-clip"
    (_snapshot(cache, repo) / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CONFIG))
    spec = TextTowerSpec(f"hf-hub:{repo}")
    needle = "has its open_clip_config.json but no weights"
    for call in (check_tower_source, text_tower):
        with pytest.raises(TextTowerError, match=needle) as info:
            call(spec)
        assert "\n" not in str(info.value) and repo in str(info.value)
    with pytest.raises(TextTowerError, match=r"'a/b/c' is not a Hugging Face repo id"):
        check_tower_source(TextTowerSpec("hf-hub:a/b/c"))
    # Random weights on purpose are still allowed (config only is enough for them).
    assert text_tower(TextTowerSpec(f"hf-hub:{repo}", "random")).encode(["liver"]).shape == (1, 24)
