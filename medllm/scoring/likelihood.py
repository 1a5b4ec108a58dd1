"""Label scoring by likelihood: the one scorer shared by the agents, evaluation and
fine-tuning code. (A model carrying a linear label head, ``medllm finetune --head linear``,
is scored by that head instead: see :mod:`medllm.scoring.heads`.)

Given prompts (already chat-formatted, ending where the answer starts) and a closed set of
options (``yes/no/maybe``, ``entailment/neutral/contradiction``, ``A-D``), return a probability
for every option from the model's own log-likelihoods — never by parsing free text.

When the options start with distinct tokens (true for all the label sets above on the
packaged tokenizers) one forward pass per prompt is enough: the option probabilities are the
next-token probabilities of those first tokens, renormalised. Otherwise each option's full
continuation log-likelihood is summed.

An optional per-option ``bias`` (added to the log-probabilities before normalising) is how a
calibration fitted on a validation fold is applied: see :func:`fit_bias`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from medllm.metrics import accuracy, macro_f1


def hf_parts(llm: Any) -> tuple[Any, Any]:
    """The transformers model and tokenizer behind a LlamaIndex ``HuggingFaceLLM``."""
    model = getattr(llm, "_model", None)
    tok = getattr(llm, "_tokenizer", None)
    if model is None or tok is None:
        raise TypeError(
            f"{type(llm).__name__} does not expose a transformers model; label scoring needs "
            "the 'transformers' backend"
        )
    return model, tok


def chat_prompt(tokenizer: Any, messages: Sequence[dict[str, str]], answer_prefix: str = "") -> str:
    """Chat-template ``messages`` with the generation prompt, then ``answer_prefix``."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return str(text) + answer_prefix


def _option_ids(tokenizer: Any, prompt: str, option: str) -> list[int]:
    lead = " " if prompt and not prompt[-1].isspace() else ""
    return list(tokenizer(lead + option, add_special_tokens=False)["input_ids"])


def score_options(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    options: Sequence[str],
    *,
    batch_size: int = 8,
    bias: Sequence[float] | None = None,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Probabilities over ``options`` for each prompt (each dict sums to 1)."""
    import torch

    if not options:
        raise ValueError("no options to score")
    head = getattr(model, "medllm_head", None)
    if head is not None:  # a linear head (medllm.scoring.heads) replaces the LM's label likelihoods
        missing = [o for o in options if o not in head.labels]
        if missing:
            raise ValueError(f"the model's linear head scores {head.labels}, not {missing}")
        logps = _head_logps
    elif _first_tokens_distinct(tokenizer, prompts, options):
        logps = _first_token_logps
    else:
        logps = _full_logps
    # Longest first, in batches of similar length: far less padding than the given order
    # (PubMedQA prompts vary 3x in length), and an out-of-memory error shows up at once.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    scored: list[dict[str, float]] = [{} for _ in prompts]
    was_training = model.training
    model.eval()
    pad_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with torch.inference_mode():
            for i in tqdm(
                range(0, len(prompts), batch_size),
                disable=not progress,
                desc="scoring",
                unit="batch",
            ):
                idx = order[i : i + batch_size]
                batch = [prompts[j] for j in idx]
                for j, row in zip(idx, logps(model, tokenizer, batch, options), strict=True):
                    scored[j] = normalise(row, options, bias)
    finally:
        tokenizer.padding_side = pad_side
        if was_training:
            model.train()
    return scored


def normalise(
    logps: Sequence[float], options: Sequence[str], bias: Sequence[float] | None = None
) -> dict[str, float]:
    vals = [lp + (bias[j] if bias is not None else 0.0) for j, lp in enumerate(logps)]
    m = max(vals)
    exps = [math.exp(v - m) for v in vals]
    z = sum(exps)
    return {o: e / z for o, e in zip(options, exps, strict=True)}


def _first_tokens_distinct(tokenizer: Any, prompts: Sequence[str], options: Sequence[str]) -> bool:
    sample = prompts[0] if prompts else ""
    firsts = [(_option_ids(tokenizer, sample, o) or [-1])[0] for o in options]
    return -1 not in firsts and len(set(firsts)) == len(firsts)


def _encode(tokenizer: Any, texts: list[str], device: Any) -> Any:
    # Chat templates already contain any BOS they need.
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {k: v.to(device) for k, v in enc.items()}


def _head_logps(
    model: Any, tokenizer: Any, prompts: list[str], options: Sequence[str]
) -> list[list[float]]:
    from medllm.scoring.heads import pooled_features

    head = model.medllm_head
    feats = pooled_features(
        model,
        tokenizer,
        prompts,
        layer=head.layer,
        pooling=head.pooling,
        max_length=head.max_length,
        batch_size=len(prompts),
    )
    probs = head.probabilities(feats)
    cols = [head.labels.index(o) for o in options]
    return [[math.log(max(float(row[c]), 1e-12)) for c in cols] for row in probs]


def _first_token_logps(
    model: Any, tokenizer: Any, prompts: list[str], options: Sequence[str]
) -> list[list[float]]:
    import torch

    enc = _encode(tokenizer, prompts, model.device)
    try:  # only the last position's logits: saves the LM head over the whole prompt
        logits = model(**enc, logits_to_keep=1).logits[:, -1, :].float()
    except TypeError:  # a model whose forward has no logits_to_keep
        logits = model(**enc).logits[:, -1, :].float()
    lp = torch.log_softmax(logits, dim=-1)
    rows = []
    for b, prompt in enumerate(prompts):
        ids = [_option_ids(tokenizer, prompt, o)[0] for o in options]
        rows.append([float(lp[b, t]) for t in ids])
    return rows


def _full_logps(
    model: Any, tokenizer: Any, prompts: list[str], options: Sequence[str]
) -> list[list[float]]:
    import torch

    rows = []
    for prompt in prompts:
        p_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        seqs = [p_ids + _option_ids(tokenizer, prompt, o) for o in options]
        width = max(len(s) for s in seqs)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=model.device)
        mask = torch.tensor(
            [[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=model.device
        )
        lp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        row = []
        for j, s in enumerate(seqs):
            n_opt = len(s) - len(p_ids)
            total = 0.0
            for t in range(width - n_opt, width):
                total += float(lp[j, t - 1, ids[j, t]])
            row.append(total)
        rows.append(row)
    return rows


_GRID = tuple(x / 4 for x in range(-16, 17))


def fit_bias(
    probs: Sequence[dict[str, float]],
    gold: Sequence[str],
    options: Sequence[str],
    *,
    objective: str = "macro_f1",
    grid: Sequence[float] = _GRID,
) -> list[float]:
    """Per-option log-probability offsets that maximise ``objective`` on a validation fold.

    Coordinate ascent over a grid (the first option's offset stays 0). Fit on validation
    items only — never on the test set.
    """
    logs = [[math.log(max(p[o], 1e-12)) for o in options] for p in probs]
    bias = [0.0] * len(options)

    def score(b: list[float]) -> float:
        pred = [options[max(range(len(options)), key=lambda j: row[j] + b[j])] for row in logs]
        return macro_f1(gold, pred, options) if objective == "macro_f1" else accuracy(gold, pred)

    best = score(bias)
    for _ in range(3):
        for j in range(1, len(options)):
            for v in grid:
                cand = list(bias)
                cand[j] = v
                s = score(cand)
                if s > best + 1e-9:
                    best, bias = s, cand
    return bias
