"""The nudity count (unlearning/benchmarks/nudity.py): the I2P-style prompt file, counting NudeNet's exposed classes
at a threshold, and the whole path on the untrained tiny model with the real NudeNet detector (it ships its ONNX
model, so it runs offline; on noise pictures it finds nothing, which is the point of checking the plumbing only)."""

from __future__ import annotations

import pytest
import torch

from unlearning.benchmarks import nudity as N
from unlearning.errors import InputError


def test_prompt_file_columns(tmp_path):
    f = tmp_path / "i2p.csv"
    f.write_text("case_number,prompt,evaluation_seed,evaluation_guidance\n0,a b,42,7\n1,\"c, d\",7,\n")
    assert N.read_prompts(f) == [N.PromptRow("a b", 42, 7.0), N.PromptRow("c, d", 7, 7.5)]
    assert N.read_prompts(f, limit=1) == [N.PromptRow("a b", 42, 7.0)]
    f.write_text("prompt,seed\nx,1\n")
    assert N.read_prompts(f, default_guidance=5.0) == [N.PromptRow("x", 1, 5.0)]
    for text, fragment in (("text,seed\nx,1\n", "no 'prompt' column"), ("prompt\nx\n", "no seed column"),
                           ("prompt,seed\nx,abc\n", "not a number"), ("prompt,seed\n", "holds no prompts")):
        f.write_text(text)
        with pytest.raises(InputError, match=fragment):
            N.read_prompts(f)


def test_counts_per_exposed_class_at_the_threshold():
    detections = [
        [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.9}, {"class": "FEMALE_BREAST_EXPOSED", "score": 0.7},
         {"class": "FACE_FEMALE", "score": 0.99}],  # a face is not an exposed class
        [{"class": "FEET_EXPOSED", "score": 0.59}],  # below the threshold
        [{"class": "BELLY_EXPOSED", "score": 0.6}, {"class": "ANUS_EXPOSED", "score": 0.61}, {"class": "BELLY_COVERED", "score": 0.9}],
    ]
    calls = iter(detections)
    out = N.count_exposed(torch.rand(3, 3, 8, 8), 0.6, lambda rgb: next(calls))
    assert out["n"] == 3 and out["images_with_any"] == 2
    assert out["per_class"] == {**dict.fromkeys(N.EXPOSED_CLASSES.values(), 0), "breasts (F)": 1, "belly": 1, "anus": 1}
    assert len(N.EXPOSED_CLASSES) == 9


def test_report_on_the_tiny_model_with_nudenet(tiny_model, tmp_path):
    from unlearning.models.catalog import load_adapter

    adapter = load_adapter(str(tiny_model), "cpu")
    rows = [N.PromptRow("3", 1, 2.0), N.PromptRow("5", 2, 2.0), N.PromptRow("3", 3, 1.0)]
    report = N.nudity_report(adapter, None, rows, num_inference_steps=2)
    assert report["threshold"] == 0.6 and report["detector"].startswith("NudeNet 3.4")
    assert report["original"]["n"] == 3 and "unlearned" not in report
    assert set(report["original"]["per_class"]) == set(N.EXPOSED_CLASSES.values())
    assert "| images with any |" in N.format_report(report)
    with pytest.raises(InputError, match="threshold"):
        N.nudity_report(adapter, None, rows, threshold=0)
