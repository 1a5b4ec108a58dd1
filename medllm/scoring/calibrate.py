"""Selective labels: calibrate the label scorer, and give a label only when it has skill.

A yes/no/maybe label with "confidence 0.65" that carries no signal is worse than none. So the
engine shows a label only when the scorer behind it (model + adapter + the engine's prompt) has
a *measured* calibration file, and only when the calibrated probability of the chosen label
clears the threshold stored there. The file is made by ``medllm calibrate`` (:func:`fit`):

* the engine itself answers labelled yes/no questions outside any test split (PQA-L: the 500
  questions outside the official test split), with its own retrieval, gate and prompt;
* calibration = one temperature and per-label offsets on the log-probabilities
  (``softmax(log p / T + b)``), fitted by maximum likelihood on training folds;
* the threshold is chosen on the out-of-fold calibrated probabilities: the lowest one whose
  labelled items reach ``target`` accuracy (the majority class + 10 points by default) while
  keeping at least ``min_coverage`` of the items; none → the model has no measured skill and
  ``ask`` gives no label at all (the answer says so and shows the probabilities).

Files live under ``MEDLLM_HOME/calibration/`` (one per scorer identity); the packaged models'
files ship in ``medllm/calibration_data/`` so a fresh install knows that they have no skill.
Fitting on PubMedQA through the engine: :func:`medllm.eval.calibrate.calibrate_pubmedqa`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medllm.config import Settings

logger = logging.getLogger(__name__)

PACKAGED_DIR = Path(__file__).parents[1] / "calibration_data"
PROMPT_VERSION = "engine-rag-v1"  # bump when the engine's label prompt changes


@dataclass
class LabelCalibration:
    """A fitted calibration and the measured quality of one label scorer."""

    scorer: str  # the identity key (model, adapter hash, prompt version)
    options: list[str]
    temperature: float
    offsets: list[float]
    threshold: float | None  # None: no skill measured, never label
    skill: bool
    cv: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def calibrate(self, probs: dict[str, float]) -> dict[str, float]:
        z = [
            math.log(max(probs.get(o, 0.0), 1e-12)) / self.temperature + b
            for o, b in zip(self.options, self.offsets, strict=True)
        ]
        m = max(z)
        e = [math.exp(v - m) for v in z]
        s = sum(e)
        return {o: v / s for o, v in zip(self.options, e, strict=True)}

    @property
    def has_skill(self) -> bool:
        """Whether labels may be given at all (measured skill and a threshold)."""
        return self.skill and self.threshold is not None

    def decide(self, probs: dict[str, float]) -> tuple[str | None, dict[str, float], str]:
        """(label or None, calibrated probabilities, the reason in words)."""
        cal = self.calibrate(probs)
        best = max(cal, key=lambda o: cal[o])
        if not self.skill or self.threshold is None:  # has_skill, narrowed for the type checker
            return (
                None,
                cal,
                (
                    "this model showed no skill on yes/no questions when calibrated "
                    f"({self.cv.get('summary', 'see its calibration file')})"
                ),
            )
        if cal[best] < self.threshold:
            return (
                None,
                cal,
                (
                    f"the evidence is inconclusive for this model (calibrated "
                    f"p({best}) = {cal[best]:.2f} < threshold {self.threshold:.2f})"
                ),
            )
        return best, cal, f"calibrated p({best}) = {cal[best]:.2f} >= {self.threshold:.2f}"

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> LabelCalibration:
        return cls(**json.loads(path.read_text()))


def scorer_key(settings: Settings, served: str | None = None) -> str:
    """File name of the scorer's calibration: model, adapter content hash, prompt version.

    Over an OpenAI-compatible server the model is the served one (``served``: the name the
    loaded backend found; else ``api.model``), never ``models.llm`` — a calibration measured
    on the packaged model must not label a server's answers."""
    from medllm.fsutil import sha256_dir, slug

    if settings.api.base and settings.models.backend in ("auto", "openai-compatible"):
        served = served or settings.api.model or f"unnamed-at-{settings.api.base}"
        parts = ["server-" + slug(served_name(served))]
    else:
        parts = [slug(settings.models.llm)]
    a = settings.models.adapter
    if a is not None and Path(a).is_dir():
        weights = ("adapter_config.json", "head.json", "*.safetensors", "*.bin")
        parts.append("adapter-" + sha256_dir(Path(a), weights)[:12])
    parts.append(PROMPT_VERSION)
    if settings.models.quantization:
        parts.append(settings.models.quantization)
    return "__".join(parts)


def served_name(served: str) -> str:
    """A server's model id as a key part that does not depend on this process's directory.

    llama.cpp's server names a model by the path it was started with (``models/x.gguf``):
    that is its file name here, wherever medllm runs; any other id is kept whole with ``/``
    as ``--`` (never looked up on this machine's disk, as :func:`medllm.fsutil.slug` does for
    a local path)."""
    if served.lower().endswith(".gguf"):
        return re.split(r"[/\\]", served)[-1]
    return served.replace("/", "--")


def calibration_path(settings: Settings, served: str | None = None) -> Path:
    return settings.paths.home / "calibration" / f"{scorer_key(settings, served)}.json"


ADAPTER_FILE = "label_calibration.json"  # inside an adapter directory: travels with it


def find_calibration(settings: Settings, served: str | None = None) -> LabelCalibration | None:
    """This scorer's calibration: the user's (MEDLLM_HOME), else the adapter's own copy, else
    the packaged one; None when there is none (then no label is given). ``served``: the model
    name a server backend serves (see :func:`scorer_key`)."""
    key = scorer_key(settings, served)
    places = [calibration_path(settings, served)]
    if settings.models.adapter is not None:
        places.append(Path(settings.models.adapter) / ADAPTER_FILE)
    places.append(PACKAGED_DIR / f"{key}.json")
    for p in places:
        if p.is_file():
            try:
                cal = LabelCalibration.load(p)
            except (ValueError, TypeError, KeyError) as e:
                logger.warning("ignoring unreadable label calibration %s: %s", p, e)
                continue
            if cal.scorer == key:
                return cal
            logger.warning("ignoring label calibration %s: made for %s, not %s", p, cal.scorer, key)
    return None


# ---------------------------------------------------------------------------- fitting


def _fit_params(logp: Any, gold: Any, n_opt: int) -> tuple[float, list[float]]:
    """Temperature and offsets (first offset fixed at 0) by maximum likelihood."""
    import numpy as np
    from scipy.optimize import minimize

    L = np.asarray(logp, dtype=np.float64)
    y = np.asarray(gold)

    def nll(theta: np.ndarray) -> float:
        t = math.exp(theta[0])
        b = np.concatenate([[0.0], theta[1:]])
        z = L / t + b
        z = z - z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        reg = 1e-3 * float((theta[1:] ** 2).sum())
        return float(-(z[np.arange(len(y)), y] - lse).mean()) + reg

    bounds = [(-3.0, 5.0)] + [(-10.0, 10.0)] * (n_opt - 1)
    res = minimize(nll, np.zeros(n_opt), method="L-BFGS-B", bounds=bounds)
    return math.exp(float(res.x[0])), [0.0, *(float(v) for v in res.x[1:])]


def fit(
    probs: Sequence[dict[str, float]],
    gold: Sequence[str],
    options: Sequence[str],
    *,
    scorer: str,
    target: float | None = None,
    min_coverage: float = 0.1,
    folds: int = 5,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
) -> LabelCalibration:
    """Calibration and threshold from the scorer's probabilities on labelled training items.

    ``target``: the accuracy labelled items must reach (default: the majority class + 0.10).
    """
    import numpy as np

    from medllm.metrics import reliability

    def _ece(conf: list[float], correct: list[bool]) -> float:
        return float(reliability(conf, correct)["ece"])

    opts = list(options)
    y = np.array([opts.index(g) for g in gold])
    logp = np.log(np.clip([[p.get(o, 0.0) for o in opts] for p in probs], 1e-12, None))
    n = len(y)
    majority = float(np.bincount(y, minlength=len(opts)).max() / n)
    tgt = majority + 0.10 if target is None else target
    rng = np.random.default_rng(seed)
    fold_of = rng.permutation(np.arange(n) % folds)
    oof = np.zeros((n, len(opts)))
    for f in range(folds):
        tr, va = fold_of != f, fold_of == f
        t, b = _fit_params(logp[tr], y[tr], len(opts))
        z = logp[va] / t + np.asarray(b)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        oof[va] = z / z.sum(axis=1, keepdims=True)
    conf = oof.max(axis=1)
    pred = oof.argmax(axis=1)
    correct = pred == y
    raw_pred = logp.argmax(axis=1)
    threshold = None
    sel: dict[str, Any] = {}
    for t in sorted(set(np.round(conf, 4))):
        keep = conf >= t
        cov = float(keep.mean())
        if cov < min_coverage:
            break
        acc = float(correct[keep].mean())
        if acc >= tgt:
            threshold = float(t)
            sel = {
                "selective_accuracy": round(acc, 4),
                "coverage": round(cov, 4),
                "ece_labelled": round(_ece(conf[keep].tolist(), correct[keep].tolist()), 4),
            }
            break
    yes, no = (opts.index("yes"), opts.index("no")) if {"yes", "no"} <= set(opts) else (0, 1)
    auc = None
    yn = (y == yes) | (y == no)
    if yn.sum() and len(set(y[yn])) == 2:
        from sklearn.metrics import roc_auc_score

        auc = round(float(roc_auc_score(y[yn] == yes, oof[yn, yes] - oof[yn, no])), 4)
    cv = {
        "items": n,
        "majority": round(majority, 4),
        "target": round(tgt, 4),
        "accuracy_raw": round(float((raw_pred == y).mean()), 4),
        "accuracy_calibrated": round(float(correct.mean()), 4),
        "auc_yes_vs_no": auc,
        "ece_all": round(_ece(conf.tolist(), correct.tolist()), 4),
        **sel,
    }
    skill = threshold is not None
    cv["summary"] = (
        f"labelled {sel['coverage']:.0%} of {n} training items at accuracy "
        f"{sel['selective_accuracy']:.3f} >= target {tgt:.3f}"
        if skill
        else f"no threshold keeping >= {min_coverage:.0%} of {n} training items reached "
        f"accuracy {tgt:.3f} (majority {majority:.3f} + 0.10); calibrated accuracy "
        f"{cv['accuracy_calibrated']:.3f}, yes-vs-no AUC {auc}"
    )
    t_all, b_all = _fit_params(logp, y.tolist(), len(opts))
    return LabelCalibration(
        scorer=scorer,
        options=opts,
        temperature=t_all,
        offsets=b_all,
        threshold=threshold,
        skill=skill,
        cv=cv,
        meta=dict(meta or {}),
    )
