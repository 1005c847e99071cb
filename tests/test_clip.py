"""CLIP-based scores for real Stable Diffusion: the availability check and the code path.

No CLIP weights can be downloaded here, so the code path is exercised with a *randomly initialised*
tiny CLIP saved to a folder (as a user's local CLIP folder would be). Its numbers mean nothing and are
only checked for shape and range; the app never shows numbers from such a model because the status
check only accepts a folder the user points at or a cached hub snapshot.
"""

from __future__ import annotations

import pytest
import torch

from unlearning.metrics import clip


@pytest.fixture
def tiny_clip(tmp_path, monkeypatch):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from unlearning.embedded.shapes import build_tokenizer

    tok = build_tokenizer()
    config = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": tok.bos_token_id,
                     "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    folder = tmp_path / "clip"
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                              tokenizer=tok)
    processor.save_pretrained(folder)
    monkeypatch.setenv(clip.ENV_VAR, str(folder))
    clip._load.cache_clear()
    yield folder
    clip._load.cache_clear()


def test_status_without_weights_says_how_to_enable(tmp_path, monkeypatch):
    monkeypatch.setenv(clip.ENV_VAR, str(tmp_path / "missing"))
    status = clip.clip_status()
    assert not status.available and clip.ENV_VAR in status.how_to_enable
    with pytest.raises(clip.MetricUnavailable):
        clip.clip_score(torch.rand(1, 3, 32, 32), ["a star"])


def test_clip_code_path_runs_on_a_local_folder(tiny_clip):
    assert clip.clip_status().available
    images = torch.rand(3, 3, 32, 32)
    score = clip.clip_score(images, ["a red star", "a circle", "a blue square"])
    assert 0.0 <= score <= 100.0
    hits = clip.zero_shot_hits(images, ["star", "star", "circle"], alternatives=["square", "heart"])
    assert hits.dtype == torch.bool and hits.shape == (3,)
