"""A linear label head on a causal LM's hidden states (``medllm finetune --head linear``).

Label-token LoRA on a few hundred examples can leave a small model's label likelihoods
almost blind (PubMedQA on SmolLM2-135M: yes-vs-no AUC 0.51-0.56, bench/RESULTS.md) while its
middle layers do hold signal. A :class:`LinearHead` is a multinomial logistic regression over
one layer's pooled hidden state (mean over the prompt, or the last token), standardised, the
layer (among candidates) and its regularisation chosen by repeated cross-validation on training
examples only. It is saved as
``head.json`` in an adapter-like directory; :func:`medllm.models.apply_adapter` attaches it to
the base model as ``model.medllm_head`` and :func:`medllm.scoring.score_options` — the one
label scorer of eval and the agents — then takes the label probabilities from the head.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HEAD_FILE = "head.json"
FORMAT = "medllm-linear-head/1"


@dataclass
class LinearHead:
    base: str  # the model the features come from
    labels: list[str]
    layer: int  # index into hidden_states (0 = embeddings)
    pooling: str  # "mean" | "last"
    max_length: int
    mean: list[float]
    scale: list[float]
    weight: list[list[float]]  # labels x hidden
    bias: list[float]
    C: float

    def save(self, directory: Path) -> None:
        (directory / HEAD_FILE).write_text(json.dumps({"format": FORMAT, **asdict(self)}))

    @classmethod
    def load(cls, directory: Path) -> LinearHead:
        data = json.loads((directory / HEAD_FILE).read_text())
        if data.pop("format", None) != FORMAT:
            raise ValueError(f"{directory / HEAD_FILE}: not a {FORMAT} file")
        return cls(**data)

    def probabilities(self, feats: Any) -> Any:
        """Label probabilities (n x labels) for raw pooled features (n x hidden)."""
        import torch

        x = (feats - torch.tensor(self.mean)) / torch.tensor(self.scale)
        logits = x @ torch.tensor(self.weight).T + torch.tensor(self.bias)
        return torch.softmax(logits, dim=-1)


def is_head_dir(path: str | Path) -> bool:
    return (Path(path) / HEAD_FILE).is_file()


def pooled_features(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    layer: int,
    pooling: str,
    max_length: int,
    batch_size: int = 8,
    progress: bool = False,
) -> Any:
    """One pooled hidden state per prompt (n x hidden, float32). Over-long prompts lose their
    beginning, never the question at the end."""
    return pooled_layers(
        model,
        tokenizer,
        prompts,
        layers=[layer],
        pooling=pooling,
        max_length=max_length,
        batch_size=batch_size,
        progress=progress,
    )[layer]


def pooled_layers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    layers: Sequence[int],
    pooling: str,
    max_length: int,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[int, Any]:
    """:func:`pooled_features` for several layers from one forward pass: {layer: n x hidden}."""
    import torch
    from tqdm.auto import tqdm

    out: dict[int, list[Any]] = {n: [] for n in layers}
    side, pad_side = tokenizer.truncation_side, tokenizer.padding_side
    tokenizer.truncation_side, tokenizer.padding_side = "left", "right"
    try:
        for i in tqdm(range(0, len(prompts), batch_size), disable=not progress, desc="features"):
            enc = tokenizer(
                list(prompts[i : i + batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
                add_special_tokens=False,
            ).to(model.device)
            mask = enc["attention_mask"].unsqueeze(-1).float()
            last = enc["attention_mask"].sum(1) - 1
            for n, hs in _hidden_states(model, enc, layers).items():
                hs = hs.float()
                if pooling == "mean":
                    out[n].append(((hs * mask).sum(1) / mask.sum(1)).cpu())
                else:
                    out[n].append(hs[torch.arange(hs.shape[0]), last].cpu())
    finally:
        tokenizer.truncation_side, tokenizer.padding_side = side, pad_side
    return {n: torch.cat(v) for n, v in out.items()}


class _Stop(Exception):
    pass


def _decoder_layers(model: Any) -> Any:
    for path in ("model.layers", "model.language_model.layers"):
        obj = model
        for name in path.split("."):
            obj = getattr(obj, name, None)
        if obj is not None:
            return obj
    return None


def _hidden_states(model: Any, enc: Any, layers: Sequence[int]) -> dict[int, Any]:
    """``hidden_states[n]`` of a forward pass for each ``n`` in ``layers``, stopping at the
    highest: the input of decoder layer ``n`` is the output of the one before (or the
    embeddings), so the layers above it never run. A request for the last state (taken after
    the final norm), or a model whose decoder layers cannot be found, gets the full pass."""
    import torch

    blocks = _decoder_layers(model)
    if blocks is None or not all(0 <= n < len(blocks) for n in layers):
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states
        return {n: hs[n] for n in layers}
    seen: dict[int, Any] = {}
    top = max(layers)

    def grabber(n: int) -> Any:
        def grab(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            seen[n] = args[0] if args else kwargs["hidden_states"]
            if n == top:
                raise _Stop

        return grab

    handles = [blocks[n].register_forward_pre_hook(grabber(n), with_kwargs=True) for n in layers]
    try:
        with torch.no_grad():
            model(**enc)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return {n: seen[n] for n in layers}


GRID = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)


def fit_head(
    feats: Mapping[int, Any],
    labels: Sequence[str],
    label_set: Sequence[str],
    *,
    base: str,
    pooling: str,
    max_length: int,
    extra: Mapping[int, Any] | None = None,
    extra_labels: Sequence[str] = (),
    extra_groups: Sequence[int] = (),
    grid: Sequence[float] = GRID,
    folds: int = 5,
    repeats: int = 3,
    seed: int = 0,
    progress: bool = False,
) -> tuple[LinearHead, dict[int, dict[str, float]]]:
    """Standardised multinomial logistic regression on one layer's features.

    ``feats`` maps each candidate layer to its features (n x hidden); the layer and C are the
    pair with the best accuracy over ``repeats`` x ``folds``-fold stratified cross-validation
    (ties: the stronger regularisation, then the lower layer). ``extra`` rows (same layers) are
    training-only views of the examples: row ``j`` belongs to example ``extra_groups[j]`` and
    joins the training folds only while that example is in them, so every CV score is measured
    on the primary rows alone. Returns the head, refitted on all rows, and the CV accuracy of
    every (layer, C)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, StratifiedKFold
    from sklearn.preprocessing import StandardScaler
    from tqdm.auto import tqdm

    y = np.asarray(labels)
    ey = np.asarray(extra_labels)
    groups = np.asarray(extra_groups, dtype=int)
    if extra is not None and not (len(ey) == len(groups) and set(extra) >= set(feats)):
        raise ValueError("extra rows need a label and a group each, for every layer")

    def rows(x: Any, ex: Any, idx: Any) -> tuple[Any, Any]:
        if ex is None:
            return x[idx], y[idx]
        keep = np.isin(groups, idx)
        return np.concatenate([x[idx], ex[keep]]), np.concatenate([y[idx], ey[keep]])

    def arrays(n: int) -> tuple[Any, Any]:
        x = np.asarray(feats[n], dtype=np.float64)
        if extra is None or not len(ey):
            return x, None
        return x, np.asarray(extra[n], dtype=np.float64)

    def fit(x: Any, yy: Any, c: float) -> tuple[Any, Any]:
        scaler = StandardScaler().fit(x)
        return scaler, LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(x), yy)

    rarest = min(int((y == lab).sum()) for lab in set(labels))
    splits = []
    for r in range(repeats):  # stratified when every label can appear in every fold
        cv: Any = (
            StratifiedKFold(n_splits=min(folds, rarest), shuffle=True, random_state=seed + r)
            if rarest >= 2
            else KFold(n_splits=min(folds, len(y)), shuffle=True, random_state=seed + r)
        )
        splits += list(cv.split(np.zeros(len(y)), y))
    scores: dict[int, dict[str, float]] = {}
    bar = tqdm(total=len(feats) * len(grid), disable=not progress, desc="cross-validation")
    for n in feats:
        x_all, ex_all = arrays(n)
        scores[n] = {}
        for c in grid:
            acc = []
            for tr, va in splits:
                scaler, lr = fit(*rows(x_all, ex_all, tr), c)
                acc.append(float((lr.predict(scaler.transform(x_all[va])) == y[va]).mean()))
            scores[n][str(c)] = float(np.mean(acc))
            bar.update()
    bar.close()
    layer, best = max(
        ((n, c) for n in feats for c in grid),
        key=lambda nc: (scores[nc[0]][str(nc[1])], -nc[1], -nc[0]),
    )
    scaler, lr = fit(*rows(*arrays(layer), np.arange(len(y))), best)
    classes = list(lr.classes_)
    coef, intercept = lr.coef_, lr.intercept_
    if len(classes) == 2:  # sklearn's binary form: one row for classes[1]
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    order = [classes.index(lab) if lab in classes else None for lab in label_set]
    width = coef.shape[1]
    weight = [coef[i].tolist() if i is not None else [0.0] * width for i in order]
    bias = [float(intercept[i]) if i is not None else -30.0 for i in order]
    head = LinearHead(
        base=base,
        labels=list(label_set),
        layer=layer,
        pooling=pooling,
        max_length=max_length,
        mean=scaler.mean_.tolist(),
        scale=scaler.scale_.tolist(),
        weight=weight,
        bias=bias,
        C=best,
    )
    return head, scores
