"""Domains of a causal language model: what to forget or keep, as text and as multiple-choice questions.

A :class:`Domain` is a name, the subject line of its questions, a question set (scored) and a text corpus
(what unlearning trains on, what the relearning attack fine-tunes on, what perplexity is measured on).
Nothing is ever downloaded: domains come from files.

- The embedded twin lists its domains in its ``twin.json`` (files under ``data/`` in its folder).
- For a real model, the published benchmark files are found under a local data folder
  (``$UNLEARNING_LM_DATA``, or a ``data/`` folder inside the model folder), in the layouts they are
  published in:

  ======================  ================================================================================
  domain                  files (searched anywhere below the data folder)
  ======================  ================================================================================
  ``wmdp-bio``            questions: ``wmdp-bio/test-*.parquet`` (hub ``cais/wmdp``) or ``wmdp-bio.json``
  ``wmdp-cyber``          (the JSON release: a list of ``{"question", "choices", "answer"}``);
  ``wmdp-chem``           corpus: ``bio-forget-corpus.jsonl`` / ``cyber-forget-corpus.jsonl``
                          (``cais/wmdp-corpora``; JSON lines with a ``text`` field); chem has none
  ``mmlu``                questions: ``all/test-*.parquet`` of ``cais/mmlu`` (``question``, ``subject``,
                          ``choices``, ``answer``) or the original release's ``data/test/*_test.csv`` (no
                          header: question, A, B, C, D, answer letter); corpus: WikiText, RMU's retain
                          text (``wikitext-2-raw-v1/train-*.parquet`` with a ``text`` column, or the original
                          release's ``wikitext-2-raw/wiki.train.raw``)
  ``mmlu:<subject>``      one MMLU subject (``college_biology``), same files
  ======================  ================================================================================

Parquet needs ``pyarrow`` (or ``fastparquet``) beside pandas; JSON, JSON lines and CSV need nothing more.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..metrics.lm import LETTERS, Question

DATA_ENV = "UNLEARNING_LM_DATA"
WMDP_SUBJECTS = {"wmdp-bio": "biology", "wmdp-cyber": "computer security", "wmdp-chem": "chemistry"}
WMDP_CORPORA = {"wmdp-bio": "bio-forget-corpus.jsonl", "wmdp-cyber": "cyber-forget-corpus.jsonl"}


@dataclass
class Domain:
    name: str
    subject: str | None  # the harness's subject line ("biology"); None: each question carries its own
    questions: list[Question]  # the scored question set
    corpus: list[str] = field(default_factory=list)  # text of the domain (may be empty: then it cannot be trained on)
    source: str = ""  # where the files came from, for the run card
    tuning_questions: list[Question] = field(default_factory=list)  # held out for choosing settings (the twin's val)
    role: str = ""  # "forget" / "retain": the twin's suggestion, shown in the UI

    def describe(self) -> dict:
        return {"name": self.name, "subject": self.subject, "questions": len(self.questions), "corpus_texts": len(self.corpus),
                "source": self.source}


# ---- file readers ------------------------------------------------------------------------------

def _rows_from_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pandas as pd

            try:
                frame = pd.read_parquet(path)
            except ImportError as exc:
                raise InputError(f"reading '{path}' needs pyarrow (pip install pyarrow); or give the JSON release of the "
                                 f"same data ({exc}).") from None
            return frame.to_dict("records")
        text = path.read_text(encoding="utf-8")
        if suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if suffix == ".json":
            data = json.loads(text)
            return data if isinstance(data, list) else data.get("data") or data.get("test") or []
        if suffix == ".csv":
            import csv

            rows = list(csv.reader(text.splitlines()))
            return [{"question": r[0], "choices": r[1:5], "answer": LETTERS.index(r[5].strip())} for r in rows if len(r) >= 6]
    except (json.JSONDecodeError, ValueError, IndexError, KeyError) as exc:
        raise InputError(f"'{path}' is not in the expected layout ({exc}).") from None
    raise InputError(f"'{path}': unsupported file type (use .json, .jsonl, .parquet or MMLU's .csv).")


def read_questions(path: str | Path) -> list[Question]:
    """Questions from a file in WMDP's / MMLU's published layout (``question``, ``choices``, ``answer``)."""
    path = Path(path)
    out = []
    for i, row in enumerate(_rows_from_file(path)):
        try:
            answer = row["answer"]
            answer = LETTERS.index(answer) if isinstance(answer, str) and answer in LETTERS else int(answer)
            out.append(Question(str(row["question"]), tuple(str(c) for c in list(row["choices"])), answer, row.get("subject")))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"'{path}', row {i}: expected question / choices / answer fields ({exc}).") from None
    if not out:
        raise InputError(f"'{path}' holds no questions.")
    return out


def read_corpus(path: str | Path, min_chars: int = 1) -> list[str]:
    """Texts from JSON lines / JSON / parquet with a ``text`` field (WMDP corpora, WikiText on the hub), WikiText's
    original ``wiki.train.raw`` (one paragraph a line) or a plain .txt (paragraphs separated by blank lines)."""
    path = Path(path)
    if path.suffix.lower() == ".raw":
        texts = path.read_text(encoding="utf-8").splitlines()
    elif path.suffix.lower() == ".txt":
        texts = path.read_text(encoding="utf-8").split("\n\n")
    else:
        texts = [str(r.get("text", "")) if isinstance(r, dict) else str(r) for r in _rows_from_file(path)]
    return [t.strip() for t in texts if len(t.strip()) >= min_chars]


# ---- the twin's domains (twin.json) ------------------------------------------------------------

def twin_domains(folder: Path, spec: dict) -> dict[str, Domain]:
    """Domains a model folder's twin.json declares: ``{"domains": {name: {subject, questions, tuning_questions,
    corpus, role}}}`` with paths relative to the folder."""
    out = {}
    for name, d in spec.get("domains", {}).items():
        out[name] = Domain(name, d.get("subject"), read_questions(folder / d["questions"]),
                           read_corpus(folder / d["corpus"]) if d.get("corpus") else [], source=f"{folder.name}/{d['questions']}",
                           tuning_questions=read_questions(folder / d["tuning_questions"]) if d.get("tuning_questions") else [],
                           role=d.get("role", ""))
    return out


# ---- the published benchmarks under a local data folder ------------------------------------------

def data_roots(model_folder: Path | None) -> list[Path]:
    roots = [Path(p).expanduser() for p in os.environ.get(DATA_ENV, "").split(os.pathsep) if p.strip()]
    if model_folder is not None and (model_folder / "data").is_dir():
        roots.append(model_folder / "data")
    return [r for r in roots if r.is_dir()]


def _first(roots: list[Path], patterns: list[str]) -> Path | None:
    for root in roots:
        for pattern in patterns:
            found = sorted(root.rglob(pattern))
            if found:
                return found[0]
    return None


def _mmlu_files(roots: list[Path], subject: str | None) -> list[Path]:
    folder = subject or "all"
    parquet = _first(roots, [f"{folder}/test-*.parquet"])
    if parquet is not None:
        return [parquet]
    for root in roots:
        csvs = sorted(root.rglob(f"{subject}_test.csv" if subject else "*_test.csv"))
        if csvs:
            return csvs
    return []


def published_domain(name: str, roots: list[Path]) -> Domain | None:
    """A WMDP / MMLU domain from local files, or None when its files are not there."""
    if name in WMDP_SUBJECTS:
        qfile = _first(roots, [f"{name}/test-*.parquet", f"{name}.json"])
        if qfile is None:
            return None
        cfile = _first(roots, [WMDP_CORPORA[name]]) if name in WMDP_CORPORA else None
        return Domain(name, WMDP_SUBJECTS[name], read_questions(qfile), read_corpus(cfile, min_chars=50) if cfile else [],
                      source=str(qfile))
    if name == "mmlu" or name.startswith("mmlu:"):
        subject = name.partition(":")[2] or None
        files = _mmlu_files(roots, subject)
        if not files:
            return None
        questions = []
        for f in files:
            subject_of_file = f.name[: -len("_test.csv")] if f.name.endswith("_test.csv") else subject
            questions += [q if q.subject else Question(q.question, q.choices, q.answer, subject_of_file) for q in read_questions(f)]
        wiki = _first(roots, ["wikitext-2-raw-v1/train-*.parquet", "wikitext-2-raw/wiki.train.raw"])
        return Domain(name, None, questions, read_corpus(wiki, min_chars=50) if wiki else [], source=str(files[0].parent))
    return None


def published_names(roots: list[Path]) -> list[str]:
    """Names of the published domains whose question files are present."""
    names = [n for n in WMDP_SUBJECTS if _first(roots, [f"{n}/test-*.parquet", f"{n}.json"]) is not None]
    if _mmlu_files(roots, None):
        names.append("mmlu")
    return names


def where_to_put_data() -> str:
    return (f"put the benchmark files in a folder and set {DATA_ENV} to it (WMDP: wmdp-bio/test-*.parquet or wmdp-bio.json, "
            "bio-forget-corpus.jsonl; MMLU: all/test-*.parquet or data/test/*_test.csv; WikiText: "
            "wikitext-2-raw-v1/train-*.parquet or wikitext-2-raw/wiki.train.raw); nothing is downloaded")
