"""From examples to token ids with the loss on the response only.

Each example becomes ``prompt ids + response ids + end-of-turn ids``. The prompt is exactly
what :func:`medllm.scoring.chat_prompt` builds (and the response starts the way
:func:`medllm.scoring.score_options` scores options), so training and label scoring agree
token for token. Labels are -100 on the prompt; with ``train_on="label"`` only the label tokens
carry loss. Every example must keep at least one unmasked label: a dataset where all labels are
masked (a template that hides the answer — the classic Unsloth pitfall) fails loudly.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from medllm.errors import DataError
from medllm.finetune.tasks import Example
from medllm.scoring import chat_prompt

logger = logging.getLogger(__name__)

IGNORE = -100
_KEEP_TAIL = 96  # prompt tokens kept at the end when a prompt is cut (question + instructions)


@dataclass
class Tokenized:
    rows: list[dict[str, Any]]
    truncated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)


def end_of_turn(tok: Any) -> str:
    """The text the chat template puts after an assistant answer (e.g. ``<|im_end|>``)."""
    marker = "\x00ANSWER\x00"
    text = tok.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}],
        tokenize=False,
    )
    tail = str(text).split(marker, 1)[-1].rstrip("\n")
    return tail.strip() or (tok.eos_token or "")


def _ids(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def tokenize(
    examples: list[Example],
    tok: Any,
    *,
    max_seq_length: int,
    train_on: str = "response",
    on_too_long: str = "truncate",
    what: str = "records",
) -> Tokenized:
    """``what`` names the examples in the warning about long ones ("training examples")."""
    end_ids = _ids(tok, end_of_turn(tok))
    out = Tokenized(rows=[])
    for ex in examples:
        prompt = chat_prompt(tok, ex.messages)
        lead = " " if prompt and not prompt[-1].isspace() else ""
        p_ids = _ids(tok, prompt)
        if ex.label is not None and ex.response.startswith(ex.label):
            head = _ids(tok, lead + ex.label)
            rest = ex.response[len(ex.label) :]
            r_ids = head + (_ids(tok, rest) if rest else [])
        else:
            head = _ids(tok, lead + ex.response)
            r_ids = head
        r_all = r_ids + end_ids
        budget = max_seq_length - len(r_all)
        if len(p_ids) > budget:
            if on_too_long == "skip" or budget < 16:
                out.skipped.append(ex.id)
                continue
            tail = min(_KEEP_TAIL, budget // 2)
            p_ids = p_ids[: budget - tail] + p_ids[len(p_ids) - tail :]
            out.truncated.append(ex.id)
        if train_on == "label" and ex.label is not None:
            labels = [IGNORE] * len(p_ids) + head + [IGNORE] * (len(r_all) - len(head))
        else:
            labels = [IGNORE] * len(p_ids) + r_all
        ids = p_ids + r_all
        out.rows.append({"input_ids": ids, "labels": labels, "id": ex.id})
        out.lengths.append(len(ids))
    check_labels(out.rows)
    if out.truncated or out.skipped:
        logger.warning(
            "%d %s over max_seq_length=%d: %d truncated, %d skipped",
            len(out.truncated) + len(out.skipped),
            what,
            max_seq_length,
            len(out.truncated),
            len(out.skipped),
        )
    return out


def check_labels(rows: list[dict[str, Any]]) -> None:
    """Fail when the loss would see no response token (all labels -100)."""
    if not rows:
        raise DataError("no training examples left after tokenisation (all skipped as too long)")
    masked = [r["id"] for r in rows if all(x == IGNORE for x in r["labels"])]
    if masked:
        raise DataError(
            f"{len(masked)} of {len(rows)} examples have every label masked, so the loss would "
            "never see a response token (check the chat template and response markers)",
            record=masked[0],
        )


def split(
    examples: list[Example], eval_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """A seeded, label-stratified train/eval split of the training items."""
    rng = random.Random(seed)
    by_label: dict[str | None, list[Example]] = {}
    for ex in examples:
        by_label.setdefault(ex.label, []).append(ex)
    train, held = [], []
    for _, group in sorted(by_label.items(), key=lambda kv: str(kv[0])):
        group = list(group)
        rng.shuffle(group)
        n = round(len(group) * eval_fraction)
        if eval_fraction > 0 and len(group) > 1:
            n = max(n, 1)
        held += group[:n]
        train += group[n:]
    rng.shuffle(train)
    return train, held


def oversample(examples: list[Example], seed: int) -> list[Example]:
    """Repeat minority-label examples (cycling through them) up to the majority count."""
    counts = Counter(ex.label for ex in examples if ex.label is not None)
    if len(counts) < 2:
        return examples
    top = max(counts.values())
    rng = random.Random(seed)
    out = list(examples)
    for label, n in counts.items():
        pool = [ex for ex in examples if ex.label == label]
        rng.shuffle(pool)
        out += [pool[i % n] for i in range(top - n)]
    rng.shuffle(out)
    return out


def class_weights(examples: list[Example], power: float = 1.0) -> dict[str, float]:
    """Per-label loss weights ``(n / (k * n_label)) ** power`` (mean weight over the
    examples is ~1 for power 1)."""
    counts = Counter(ex.label for ex in examples if ex.label is not None)
    if not counts:
        return {}
    n, k = sum(counts.values()), len(counts)
    return {str(lab): (n / (k * c)) ** power for lab, c in counts.items()}
