"""A linear label head on a causal LM's hidden states (``medllm finetune --head linear``).

Label-token LoRA on a few hundred examples can leave a small model's label likelihoods
almost blind (PubMedQA on SmolLM2-135M: yes-vs-no AUC 0.51-0.56, bench/RESULTS.md) while its
middle layers do hold signal. A :class:`LinearHead` is a multinomial logistic regression over
one layer's pooled hidden state (mean over the prompt, or the last token), standardised, its
regularisation chosen by cross-validation on training examples only. It is saved as
``head.json`` in an adapter-like directory; :func:`medllm.models.apply_adapter` attaches it to
the base model as ``model.medllm_head`` and :func:`medllm.scoring.score_options` — the one
label scorer of eval and the agents — then takes the label probabilities from the head.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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
    import torch
    from tqdm.auto import tqdm

    out = []
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
            with torch.no_grad():
                hs = model(**enc, output_hidden_states=True).hidden_states[layer].float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            if pooling == "mean":
                out.append(((hs * mask).sum(1) / mask.sum(1)).cpu())
            else:
                last = enc["attention_mask"].sum(1) - 1
                out.append(hs[torch.arange(hs.shape[0]), last].cpu())
    finally:
        tokenizer.truncation_side, tokenizer.padding_side = side, pad_side
    return torch.cat(out)


def fit_head(
    feats: Any,
    labels: Sequence[str],
    label_set: Sequence[str],
    *,
    base: str,
    layer: int,
    pooling: str,
    max_length: int,
    grid: Sequence[float] = (0.001, 0.01, 0.1, 1.0),
    folds: int = 5,
    seed: int = 0,
) -> tuple[LinearHead, dict[str, float]]:
    """Standardised multinomial logistic regression; C chosen by ``folds``-fold CV accuracy.
    Returns the head (refitted on all ``feats``) and the CV accuracy of every C."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(feats, dtype=np.float64)
    y = list(labels)

    def model(c: float) -> Any:
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))

    rarest = min(y.count(lab) for lab in set(y))
    cv: Any = (  # stratified when every label can appear in every fold
        StratifiedKFold(n_splits=min(folds, rarest), shuffle=True, random_state=seed)
        if rarest >= 2
        else KFold(n_splits=min(folds, len(y)), shuffle=True, random_state=seed)
    )
    scores = {c: float(cross_val_score(model(c), x, y, cv=cv).mean()) for c in grid}
    best = max(grid, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    pipe = model(best).fit(x, y)
    scaler, lr = pipe[0], pipe[1]
    classes = list(lr.classes_)
    coef, intercept = lr.coef_, lr.intercept_
    if len(classes) == 2:  # sklearn's binary form: one row for classes[1]
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    order = [classes.index(lab) if lab in classes else None for lab in label_set]
    width = x.shape[1]
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
    return head, {str(c): s for c, s in scores.items()}
