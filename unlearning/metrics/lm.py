"""Multiple-choice accuracy and perplexity for causal language models, scored as lm-evaluation-harness does.

WMDP and MMLU are ``multiple_choice`` tasks in lm-evaluation-harness: the prompt is the question and its
lettered options, the candidate continuations are " A" ... " D", and the model's answer is the candidate
with the highest log-likelihood (``acc``). ``format="cloze"`` scores the option *texts* instead (the
harness's "continuation" variants): useful for small models that know the facts but not the letter format.

    prompt (letter)   {description}{question}\\nA. {c_0}\\nB. {c_1}\\nC. {c_2}\\nD. {c_3}\\nAnswer:
    prompt (cloze)    {description}Question: {question}\\nAnswer:
    description       "The following are multiple choice questions (with answers) about {subject}.\\n\\n"
    log-likelihood    sum over the continuation's tokens of log p(token | everything before it); the
                      continuation's tokens are those of tok(prompt + continuation) after tok(prompt), as the
                      harness splits them
    accuracy          share of questions whose correct option has the highest log-likelihood (ties: first)
    perplexity        exp(mean negative log-likelihood per predicted token) over a set of texts (token-level:
                      comparable between two versions of one model, not across tokenizers)

The scoring functions take a ``loglikelihood(pairs) -> list[float]`` callable, so the same code scores the
embedded twin during training, a loaded model, and a model with an unlearning edit applied.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ..errors import InputError

LETTERS = ("A", "B", "C", "D")
FORMATS = ("letter", "cloze")
LogLikelihood = Callable[[Sequence[tuple[str, str]]], list[float]]  # (context, continuation) pairs -> summed log-probs


@dataclass(frozen=True)
class Question:
    """One multiple-choice question in WMDP's / MMLU's published layout."""

    question: str
    choices: tuple[str, ...]
    answer: int  # index of the correct choice
    subject: str | None = None  # MMLU's per-question subject (e.g. "college_biology"); None: the domain's

    def __post_init__(self) -> None:
        if not 2 <= len(self.choices) <= len(LETTERS):
            raise InputError(f"a question needs 2 to {len(LETTERS)} choices, this one has {len(self.choices)}: {self.question[:60]!r}.")
        if not 0 <= self.answer < len(self.choices):
            raise InputError(f"answer index {self.answer} is outside the {len(self.choices)} choices of {self.question[:60]!r}.")

    def to_json(self) -> dict:
        return {"question": self.question, "choices": list(self.choices), "answer": self.answer}


def description(subject: str | None) -> str:
    """The harness's task description for a subject ("college_biology" reads "college biology")."""
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n" if subject else ""


def format_question(question: str, choices: Sequence[str], subject: str | None) -> str:
    """The letter-format prompt (``description`` + ``doc_to_text`` of the harness's WMDP / MMLU tasks)."""
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, choices, strict=False))
    return f"{description(subject)}{question.strip()}{options}\nAnswer:"


def requests(q: Question, subject: str | None, fmt: str = "letter") -> list[tuple[str, str]]:
    """The (context, continuation) pairs the harness scores for one question, one per choice."""
    subject = q.subject or subject
    if fmt == "letter":
        context = format_question(q.question, q.choices, subject)
        return [(context, f" {LETTERS[i]}") for i in range(len(q.choices))]
    if fmt == "cloze":
        context = f"{description(subject)}Question: {q.question.strip()}\nAnswer:"
        return [(context, f" {choice}") for choice in q.choices]
    raise InputError(f"unknown question format '{fmt}'; choose one of {', '.join(FORMATS)}.")


def score_questions(loglikelihood: LogLikelihood, questions: Sequence[Question], subject: str | None, *,
                    fmt: str = "letter", batch_size: int = 16) -> Iterator[list[bool]]:
    """Per batch of questions: whether the model picked the right option, for each one (streamed)."""
    for start in range(0, len(questions), batch_size):
        batch = questions[start : start + batch_size]
        pairs = [r for q in batch for r in requests(q, subject, fmt)]
        scores = loglikelihood(pairs)
        out, i = [], 0
        for q in batch:
            mine = scores[i : i + len(q.choices)]
            i += len(q.choices)
            out.append(max(range(len(mine)), key=mine.__getitem__) == q.answer)
        yield out


def accuracy(loglikelihood: LogLikelihood, questions: Sequence[Question], subject: str | None, *, fmt: str = "letter",
             batch_size: int = 16) -> float:
    if not questions:
        raise InputError("there are no questions to score.")
    hits = [h for batch in score_questions(loglikelihood, questions, subject, fmt=fmt, batch_size=batch_size) for h in batch]
    return sum(hits) / len(hits)


def perplexity(nll_sum_and_count: Callable[[Sequence[str]], tuple[float, int]], texts: Sequence[str], batch_size: int = 16) -> float:
    """exp(total NLL / predicted tokens) over ``texts``, from a callable giving a batch's (NLL sum, token count)."""
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        nll, n = nll_sum_and_count(texts[start : start + batch_size])
        total, count = total + nll, count + n
    if count == 0:
        raise InputError("perplexity needs at least one text with two or more tokens.")
    return math.exp(total / count)
