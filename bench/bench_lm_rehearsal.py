"""Full-size rehearsal of the language-model path: a 1 B-class model built from its published config with random
weights, loaded and unlearned by the same code as a real checkpoint (one iteration per method).

    /work/bin/cpu --both -- python bench/bench_lm_rehearsal.py [--config tinyllama-1.1b|zephyr-7b] [--dtype bf16]

What it checks, at real size and without a GPU or a download: ``AutoModelForCausalLM`` / ``AutoTokenizer``
loading from a folder (safetensors), the published WMDP / MMLU / WikiText file layouts (small files written here
from the twin's generator, in those layouts), RMU's paper settings (layer 7, down_proj of layers 5-7), RMU + UAM,
NegGrad+ (+ UAM), the harness-style scoring and a continuation, in bf16 with float32 trained copies (the CUDA
path's dtypes). Prints seconds and peak resident memory per stage. The numbers the random model scores mean
nothing and are not printed as results.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Published configs (config.json of the hub repos), the fields that set the shapes.
CONFIGS = {
    "tinyllama-1.1b": ("LlamaForCausalLM", {  # TinyLlama/TinyLlama-1.1B-Chat-v1.0
        "hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 32, "num_key_value_heads": 4,
        "num_hidden_layers": 22, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "vocab_size": 32000,
        "rope_theta": 10000.0, "tie_word_embeddings": False}),
    "zephyr-7b": ("MistralForCausalLM", {  # HuggingFaceH4/zephyr-7b-beta (the paper's model); ~15 GB in bf16
        "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
        "num_hidden_layers": 32, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "vocab_size": 32000,
        "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False}),
}


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def write_published_layouts(root: Path) -> None:
    """Small files in WMDP's / MMLU's / WikiText's published layouts, filled from the twin's generator."""
    from unlearning.datasets import facts as data

    world = data.World()
    (root / "wmdp").mkdir(parents=True)
    (root / "wmdp" / "wmdp-bio.json").write_text(json.dumps([q.to_json() for q in world.question_set("hazard", "test")]))
    (root / "wmdp-corpora").mkdir()
    (root / "wmdp-corpora" / "bio-forget-corpus.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in world.corpus("hazard", 64, seed=0)))
    (root / "mmlu" / "data" / "test").mkdir(parents=True)
    rows = [[q.question, *q.choices, "ABCD"[q.answer]] for q in world.question_set("general", "test")]
    import csv

    with open(root / "mmlu" / "data" / "test" / "miscellaneous_test.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    (root / "wikitext-2-raw").mkdir()
    (root / "wikitext-2-raw" / "wiki.train.raw").write_text("\n".join(world.corpus("general", 64, seed=0)) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="tinyllama-1.1b", choices=list(CONFIGS))
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--workdir", default="/tmp/lm-rehearsal")
    parser.add_argument("--keep", action="store_true", help="keep the written model folder")
    args = parser.parse_args()
    import os

    import transformers

    from unlearning.datasets import facts as data
    from unlearning.embedded.facts_lm import build_tokenizer
    from unlearning.methods import get_method
    from unlearning.methods.base import RunContext, UnlearnTask
    from unlearning.models.causal_lm import CausalLMAdapter

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    folder, datadir = work / "model", work / "data"
    stages = []

    def stage(name: str, t0: float, **extra) -> None:
        stages.append({"stage": name, "seconds": round(time.perf_counter() - t0, 2), "peak_rss_gib": round(peak_gib(), 2), **extra})
        print(f"  {name}: {stages[-1]['seconds']:.1f} s, peak RSS {stages[-1]['peak_rss_gib']:.2f} GiB {extra or ''}", flush=True)

    # 1. the model from its published config, random weights, saved as a hub snapshot would be
    t0 = time.perf_counter()
    arch, fields = CONFIGS[args.config]
    config_cls = getattr(transformers, arch.replace("ForCausalLM", "Config"))
    model = getattr(transformers, arch)._from_config(config_cls(**fields, bos_token_id=1, eos_token_id=2, pad_token_id=0),
                                                   dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, safe_serialization=True)
    build_tokenizer(data.World().words()).save_pretrained(folder)  # a word-level tokenizer (Llama's is not downloadable here)
    del model
    stage("build + save_pretrained", t0, parameters=n_params)
    write_published_layouts(datadir)
    os.environ["UNLEARNING_LM_DATA"] = str(datadir)

    # 2. load through the family adapter (AutoModelForCausalLM / AutoTokenizer, safetensors)
    t0 = time.perf_counter()
    adapter = CausalLMAdapter(folder, torch.device("cpu"), dtype)
    stage("load (AutoModelForCausalLM)", t0, domains=adapter.concepts(), dtype=str(adapter.dtype))
    task = UnlearnTask(forget=["wmdp-bio"], retain=["mmlu"], seed=0)

    # 3. one iteration of each method at the paper's settings
    for label, method, overrides in [("RMU", "rmu", {}), ("RMU + UAM", "rmu", {"uam": True}),
                                     ("NegGrad+", "gradient_ascent", {"retain_weight": 1.0}),
                                     ("NegGrad+ + UAM", "gradient_ascent", {"retain_weight": 1.0, "uam": True})]:
        spec = get_method(method).for_family(adapter.family)
        settings = spec.settings(None, {"iterations": 1, **overrides})
        t0 = time.perf_counter()
        edit = spec.unlearn(adapter, task, settings, RunContext())
        stage(f"{label}, 1 iteration (batch {settings.batch_size})", t0, changed_tensors=len(edit.params),
              changed_values=edit.num_changed, loss=round(edit.loss_log[0]["loss"], 4))

    # 4. scoring and a continuation with the last edit substituted
    t0 = time.perf_counter()
    bio = adapter.domain("wmdp-bio")
    adapter.accuracy(bio.questions[:8], bio.subject, edit.params)
    stage("score 8 WMDP-layout questions (letter)", t0)
    t0 = time.perf_counter()
    adapter.continue_text("The main export of", params=edit.params, max_new_tokens=8, temperature=0.8, seed=0)
    stage("continuation, 8 tokens", t0)
    print(json.dumps({"config": args.config, "dtype": args.dtype, "torch": torch.__version__,
                      "transformers": transformers.__version__, "stages": stages}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
