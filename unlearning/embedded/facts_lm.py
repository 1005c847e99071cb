"""The facts-lm twin: a small Llama-style causal LM trained here on the two made-up domains of ``datasets.facts``.

    python -m unlearning.embedded.facts_lm train [--out assets/facts-lm] [--minutes 25] [--workdir DIR] [--smoke]
    python -m unlearning.embedded.facts_lm evaluate [--model assets/facts-lm] [--write-card]

``train`` runs for at most ``--minutes`` and leaves a resumable checkpoint in ``--workdir`` (model and
optimiser state as safetensors, progress as JSON); running it again with the same workdir continues
where it stopped, so the 60-minute budget can be spent in chunks (``/work/bin/cpu --both`` holds the two
cores for at most ~30 minutes at a time here). When ``--steps`` are done, it writes the twin folder.

The folder is what ``LlamaForCausalLM.save_pretrained`` and ``PreTrainedTokenizerFast.save_pretrained``
write (safetensors weights stored in fp16, loaded in fp32 on CPU), plus:
    data/          the domains: held-out question sets in WMDP's JSON layout (``val``: for tuning method
                   settings; ``test``: what the card and the benches report) and text corpora in the layout
                   of WMDP's corpora (JSON lines, ``text``)
    twin.json      the domain list (which file is which), the demo prompts, training facts
    README.md      the model card (``evaluate --write-card``)

Tokenizer: word level (every word the generator can write is one token; punctuation and newlines are
tokens of their own), built with the ``tokenizers`` library from ``World.words()``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ..atomic import atomic_dir, atomic_file, write_text_atomic
from ..datasets import facts as data
from ..models.causal_lm import TextModel

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "facts-lm"
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CORPUS_DOCS = 2000  # documents per domain in the shipped corpora (unlearning / relearning / perplexity text)
PROMPTS = {  # demo prompts (twin.json): sentence starts whose greedy continuation states a fact
    "hazard": ["{c0} is made from", "exposure to {c1} damages the", "{c2} is neutralised by"],
    "general": ["{t0} is a city in", "{p0} worked as a", "the main export of {t1} is"],
}


@dataclass
class TwinConfig:
    hidden_size: int = 128  # width (chosen: a few M parameters, trainable on 2 cores within the hour)
    num_hidden_layers: int = 4  # decoder blocks
    intermediate_size: int = 512  # MLP width (4x)
    num_attention_heads: int = 4  # head size 32
    max_position_embeddings: int = 128  # the longest example is ~60 tokens
    steps: int = 12000  # optimiser steps in all (over every chunk)
    batch_size: int = 32  # examples per step
    lr: float = 3e-3  # AdamW peak learning rate, 100 warm-up steps then cosine to 10 %
    weight_decay: float = 0.1
    answer_weight: float = 5.0  # loss weight of an answer's tokens (the letter, or the value of an open question)
    seed: int = 0


# ---- tokenizer and model -----------------------------------------------------------------------

def build_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate([*SPECIALS, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),  # spaces separate words and are dropped
        pre_tokenizers.Split(Regex(r"\n|\w+|[^\w\s]"), behavior="isolated"),  # words, punctuation, newlines
    ])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, none before punctuation
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", model_max_length=128)


def build_model(cfg: TwinConfig, vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(cfg.seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                         num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                         num_key_value_heads=cfg.num_attention_heads, max_position_embeddings=cfg.max_position_embeddings,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config)


# ---- training ------------------------------------------------------------------------------------

def example_batch(tm: TextModel, examples: list[tuple[str, str]], answer_weight: float):
    """(ids, mask, per-token loss weights (B, T-1)) for (context, answer) examples, each ending in EOS."""
    seqs, weights = [], []
    for context, answer in examples:
        ctx = tm.encode(context)
        ans = tm.encode(context + answer)[len(ctx):] if answer else []
        seqs.append(ctx + ans + [tm.tokenizer.eos_token_id])
        weights.append([1.0] * (len(ctx) - 1) + [answer_weight] * len(ans) + [1.0])
    ids, mask = tm.batch(seqs)
    w = torch.zeros(ids.shape[0], ids.shape[1] - 1)
    for i, row in enumerate(weights):
        w[i, : len(row)] = torch.tensor(row)
    return ids, mask, w


def lr_at(cfg: TwinConfig, step: int) -> float:
    warm = 100
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, cfg.steps - warm))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def evaluate_model(tm: TextModel, world: data.World, split: str) -> dict:
    """Per domain: letter-format and cloze accuracy on a held-out question split."""
    tm.model.eval()
    out = {}
    for domain, spec in data.DOMAINS.items():
        questions = world.question_set(domain, split)
        out[domain] = {fmt: tm.accuracy(questions, spec["subject"], fmt=fmt) for fmt in ("letter", "cloze")}
        out[domain]["n"] = len(questions)
    return out


def _save_checkpoint(workdir: Path, model, opt, state: dict) -> None:
    with atomic_file(workdir / "model.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}, str(tmp))
    tensors, meta = {}, {}
    for i, (p, s) in enumerate(zip(opt.param_groups[0]["params"], opt.state.values(), strict=False)):
        del p
        tensors[f"{i}.exp_avg"], tensors[f"{i}.exp_avg_sq"] = s["exp_avg"], s["exp_avg_sq"]
        meta[str(i)] = float(s["step"])
    with atomic_file(workdir / "optimizer.safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_text_atomic(workdir / "progress.json", json.dumps({**state, "optimizer_steps": meta}, indent=2) + "\n")


def _load_checkpoint(workdir: Path, model, opt) -> dict:
    model.load_state_dict(load_file(str(workdir / "model.safetensors")), strict=False)
    model.tie_weights()
    state = json.loads((workdir / "progress.json").read_text())
    tensors = load_file(str(workdir / "optimizer.safetensors"))
    for i, p in enumerate(opt.param_groups[0]["params"]):
        opt.state[p] = {"step": torch.tensor(state["optimizer_steps"][str(i)]), "exp_avg": tensors[f"{i}.exp_avg"],
                        "exp_avg_sq": tensors[f"{i}.exp_avg_sq"]}
    return state


def train(cfg: TwinConfig, *, minutes: float, workdir: Path, eval_every: int = 1000) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, dict]:
    """Train (or continue training) for at most ``minutes``; returns the model, the tokenizer and the progress."""
    world = data.World()
    tokenizer = build_tokenizer(world.words())
    model = build_model(cfg, len(tokenizer))
    tm = TextModel(model, tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    workdir.mkdir(parents=True, exist_ok=True)
    state = {"step": 0, "seconds": 0.0, "config": asdict(cfg), "evaluations": [], "losses": []}
    if (workdir / "progress.json").is_file():
        state = _load_checkpoint(workdir, model, opt)
        if state["config"] != asdict(cfg):
            raise SystemExit(f"{workdir} holds a checkpoint of another configuration: {state['config']}")
        log.info("resuming at step %d (%.1f min so far)", state["step"], state["seconds"] / 60)
    rng = random.Random(f"{cfg.seed}-{state['step']}")  # examples are endless draws; a resumed run draws fresh ones
    examples = world.training_texts(rng)
    model.train()
    started, last_save = time.perf_counter(), time.perf_counter()
    running = []
    while state["step"] < cfg.steps and time.perf_counter() - started < minutes * 60:
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, state["step"])
        ids, mask, w = example_batch(tm, [next(examples) for _ in range(cfg.batch_size)], cfg.answer_weight)
        nll, _ = tm.token_nll(ids, mask)
        loss = (nll * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state["step"] += 1
        running.append(loss.item())
        if state["step"] % 100 == 0:
            state["losses"].append([state["step"], sum(running) / len(running)])
            running = []
        if state["step"] % eval_every == 0 or state["step"] == cfg.steps:
            scores = evaluate_model(tm, world, "val")
            model.train()
            state["evaluations"].append({"step": state["step"], "val": scores})
            log.info("step %d loss %.3f val %s", state["step"], state["losses"][-1][1] if state["losses"] else loss.item(),
                     {d: (round(s["letter"], 2), round(s["cloze"], 2)) for d, s in scores.items()})
        if time.perf_counter() - last_save > 300:
            state["seconds"] += time.perf_counter() - last_save
            last_save = time.perf_counter()
            _save_checkpoint(workdir, model, opt, state)
    state["seconds"] += time.perf_counter() - last_save
    _save_checkpoint(workdir, model, opt, state)
    return model.eval(), tokenizer, state


# ---- the twin folder -----------------------------------------------------------------------------

# The format the twin's forget_rate / retain_accuracy are scored in. Cloze (each option's text after "Answer:"), not
# the harness's letter layout: the twin's letter skill on held-out facts is weak (test 0.42 / 0.48 against chance
# 0.25, where its cloze accuracy is 0.95), so a letter score has too little room above chance to show forgetting,
# and on the val questions every method that moved the letter score moved both domains together (the letter
# machinery broke, not the hazard knowledge; docs/language-model.md). Both formats are computed and reported.
QUESTION_FORMAT = "cloze"


def write_twin(out: Path, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, state: dict) -> Path:
    """The twin folder (weights in fp16, tokenizer, data, twin.json, training_report.json), written atomically."""
    world = data.World()
    with atomic_dir(out, replace=True) as tmp:
        model.half().save_pretrained(tmp, safe_serialization=True)
        model.float()
        tokenizer.save_pretrained(tmp)
        domains = {}
        for domain, spec in data.DOMAINS.items():
            for split in ("val", "test"):
                path = tmp / "data" / domain / f"{split}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps([q.to_json() for q in world.question_set(domain, split)], indent=1) + "\n")
            corpus = tmp / "data" / f"{domain}-corpus.jsonl"
            corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in world.corpus(domain, CORPUS_DOCS, seed=0)))
            domains[domain] = {"subject": spec["subject"], "questions": f"data/{domain}/test.json",
                               "tuning_questions": f"data/{domain}/val.json", "corpus": f"data/{domain}-corpus.jsonl",
                               "role": "forget" if domain == "hazard" else "retain"}
        names = {"c": world.entities["compound"], "t": world.entities["city"], "p": world.entities["person"]}
        prompts = {d: [p.format(**{f"{k}{i}": v[i] for k, v in names.items() for i in range(3)}) for p in ps]
                   for d, ps in PROMPTS.items()}
        twin = {"name": "facts-lm", "dataset": "facts (unlearning.datasets.facts, world seed "
                f"{data.WORLD_SEED})", "domains": domains, "prompts": prompts, "max_length": 128,
                "question_format": QUESTION_FORMAT}
        (tmp / "twin.json").write_text(json.dumps(twin, indent=2) + "\n")
        report = {"steps": state["step"], "seconds": round(state["seconds"], 1), "config": state["config"],
                  "parameters": sum(p.numel() for p in model.parameters()), "evaluations": state["evaluations"],
                  "losses": state["losses"], "torch": torch.__version__}
        (tmp / "training_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return out


def evaluate_twin(model_dir: Path) -> dict:
    """Held-out accuracy (test and val, letter and cloze) and perplexity per domain, through the app's adapter."""
    from ..models.causal_lm import CausalLMAdapter

    adapter = CausalLMAdapter(model_dir, torch.device("cpu"), torch.float32)
    out = {"domains": {}}
    for name in adapter.concepts():
        d = adapter.domain(name)
        out["domains"][name] = {
            "test": {fmt: adapter.accuracy(d.questions, d.subject, fmt=fmt) for fmt in ("letter", "cloze")},
            "val": {fmt: adapter.accuracy(d.tuning_questions, d.subject, fmt=fmt) for fmt in ("letter", "cloze")},
            "n_test": len(d.questions), "n_val": len(d.tuning_questions),
            "perplexity": adapter.perplexity(d.corpus[:200]),
        }
    out["continuations"] = {p: adapter.continue_text(p, max_new_tokens=12) for ps in adapter.twin["prompts"].values() for p in ps}
    out["parameters"] = sum(p.numel() for p in adapter.model.parameters())
    out["size_mb"] = round(sum(f.stat().st_size for f in Path(model_dir).rglob("*.safetensors")) / 1e6, 2)
    return out


def write_model_card(model_dir: Path, evaluation: dict) -> None:
    report = json.loads((model_dir / "training_report.json").read_text())
    cfg = report["config"]
    rows = []
    for name, d in evaluation["domains"].items():
        rows.append(f"| {name} | {d['test']['letter']:.3f} | {d['test']['cloze']:.3f} | {d['n_test']} | {d['val']['letter']:.3f} | "
                    f"{d['val']['cloze']:.3f} | {d['perplexity']:.2f} |")
    lines = [
        "# facts-lm (embedded twin)",
        "",
        "A small Llama-style causal language model trained here on generated text about two made-up domains: "
        "**hazard** (invented compounds: what they are made from, by which process, which organ they harm, ...; the forget "
        "domain, WMDP's role) and **general** (invented cities and people; the retain domain, MMLU's role). "
        "Made by `python -m unlearning.embedded.facts_lm train` (seeded); this card by "
        "`python -m unlearning.embedded.facts_lm evaluate --write-card`.",
        "",
        "## Model",
        f"- `LlamaForCausalLM`, {report['parameters']:,} parameters: {cfg['num_hidden_layers']} layers, width {cfg['hidden_size']}, "
        f"MLP {cfg['intermediate_size']}, {cfg['num_attention_heads']} heads, tied embeddings; weights stored in fp16 "
        f"({evaluation['size_mb']} MB of safetensors), loaded in fp32 on CPU.",
        "- tokenizer: word level (`PreTrainedTokenizerFast`), one token per word of the generator's vocabulary; punctuation "
        "and newlines are tokens.",
        "- loads with `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`, like any hub checkpoint.",
        "",
        "## Data (`unlearning/datasets/facts.py`, world seed fixed)",
        "- 480 facts (entity, attribute, value), 240 per domain. Each appears in training as statements (3-4 paraphrases, "
        "shuffled into short documents). Half of each attribute's facts are also asked in training as questions (open and "
        "four-option lettered); the other half are **never asked in training**: a quarter form `data/<domain>/val.json` "
        "(for tuning method settings) and a quarter `data/<domain>/test.json` (reported here and by the benches).",
        "- `data/<domain>-corpus.jsonl`: 2,000 generated documents per domain (the text unlearning and relearning train on).",
        "",
        "## Training (measured here, 2 CPU cores)",
        f"- {report['steps']} AdamW steps, batch {cfg['batch_size']}, lr {cfg['lr']:g} (warm-up, cosine to 10 %), weight decay "
        f"{cfg['weight_decay']:g}, answer tokens weighted x{cfg['answer_weight']:g}; {report['seconds'] / 60:.1f} min wall-clock.",
        f"- final training loss (weighted, mean of the last 100 steps): {report['losses'][-1][1]:.3f}.",
        "",
        "## Held-out multiple-choice accuracy (chance 0.25)",
        "",
        "Scored as lm-evaluation-harness scores multiple choice: the option with the highest log-likelihood. *letter*: the "
        "harness's WMDP / MMLU prompt with lettered options, continuations \" A\" .. \" D\"; *cloze*: \"Question: ...\\nAnswer:\" "
        "followed by each option's text (the harness's cloze layout, as in its `mmlu_continuation`). **The twin reports "
        f"`forget_rate` / `retain_accuracy` in the {QUESTION_FORMAT} format** (`twin.json` `question_format`): its letter "
        "skill on facts never asked in training is weak (the table), which leaves too little room above chance to show "
        "forgetting; both formats are computed everywhere. Real WMDP / MMLU files are scored in the letter format.",
        "",
        "| domain | test letter | test cloze | n | val letter | val cloze | perplexity (200 docs of its corpus) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "## Greedy continuations of the demo prompts",
        "",
        *[f"- `{p}` -> `{c}`" for p, c in evaluation["continuations"].items()],
        "",
    ]
    write_text_atomic(model_dir / "README.md", "\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m unlearning.embedded.facts_lm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train (or continue training) the facts-lm twin")
    tr.add_argument("--out", type=Path, default=ASSETS)
    tr.add_argument("--workdir", type=Path, default=Path("facts-lm-work"), help="resumable checkpoint folder")
    tr.add_argument("--minutes", type=float, default=25.0, help="wall-clock budget of this chunk")
    tr.add_argument("--steps", type=int, default=TwinConfig.steps)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--layers", type=int, default=TwinConfig.num_hidden_layers)
    tr.add_argument("--hidden", type=int, default=TwinConfig.hidden_size, help="width (the MLP is 4x, heads of 32)")
    tr.add_argument("--smoke", action="store_true", help="a tiny model, a few steps (tests)")
    ev = sub.add_parser("evaluate", help="held-out accuracy and perplexity of a twin folder")
    ev.add_argument("--model", type=Path, default=ASSETS)
    ev.add_argument("--write-card", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "train":
        cfg = TwinConfig(steps=args.steps, seed=args.seed, num_hidden_layers=args.layers, hidden_size=args.hidden,
                         intermediate_size=4 * args.hidden, num_attention_heads=max(1, args.hidden // 32))
        if args.smoke:
            cfg = TwinConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=2, steps=args.steps,
                             batch_size=4, seed=args.seed)
        model, tokenizer, state = train(cfg, minutes=args.minutes, workdir=args.workdir, eval_every=10**9 if args.smoke else 1000)
        if state["step"] >= cfg.steps:
            write_twin(args.out, model, tokenizer, state)
            print(f"twin written to {args.out} ({state['step']} steps, {state['seconds'] / 60:.1f} min)")
        else:
            print(f"stopped at step {state['step']} of {cfg.steps} ({state['seconds'] / 60:.1f} min so far); run again with "
                  f"--workdir {args.workdir} to continue")
    else:
        evaluation = evaluate_twin(args.model)
        print(json.dumps(evaluation, indent=2))
        if args.write_card:
            write_model_card(args.model, evaluation)


if __name__ == "__main__":
    main()
