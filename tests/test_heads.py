"""The linear label head (``medllm finetune --head linear``): fitting, saving, and the real
SmolLM2 + PubMedQA path through training, loading, the shared scorer and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medllm.config import Settings
from medllm.errors import MedllmError
from medllm.finetune.config import FinetuneConfig
from medllm.scoring.heads import GRID, LinearHead, fit_head, is_head_dir


def test_fit_head_separates_and_round_trips(tmp_path: Path) -> None:
    import torch

    g = torch.Generator().manual_seed(0)
    labels = ["yes", "no", "maybe"]
    centres = {"yes": 2.0, "no": -2.0}
    y = ["yes", "no"] * 20
    x = torch.stack([torch.randn(5, generator=g) + centres[v] for v in y])
    noise = torch.randn(40, 5, generator=g)
    head, cv = fit_head({1: noise, 3: x}, y, labels, base="m", pooling="mean", max_length=64)
    assert head.layer == 3  # the layer with the signal
    assert set(cv) == {1, 3} and set(cv[3]) == {str(c) for c in GRID}
    assert max(cv[3].values()) > 0.9 and max(cv[1].values()) < 0.8
    p = head.probabilities(x)
    assert p.shape == (40, 3) and torch.allclose(p.sum(1), torch.ones(40))
    pred = [labels[int(i)] for i in p.argmax(1)]
    assert sum(a == b for a, b in zip(pred, y, strict=True)) >= 38
    assert float(p[:, 2].max()) < 1e-6  # "maybe" never seen in training: never predicted
    head.save(tmp_path)
    assert is_head_dir(tmp_path) and LinearHead.load(tmp_path) == head
    (tmp_path / "head.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a medllm-linear-head"):
        LinearHead.load(tmp_path)


@pytest.fixture(scope="module")
def head_run(tmp_path_factory: pytest.TempPathFactory, models_cache: Path, pubmedqa_dir: Path):  # type: ignore[no-untyped-def]
    from medllm.finetune.head import train_linear_head

    home = tmp_path_factory.mktemp("head-home")
    (home / "models").symlink_to(models_cache, target_is_directory=True)
    s = Settings.load(
        config_file=False, paths={"home": str(home)}, eval={"pubmedqa_dir": str(pubmedqa_dir)}
    )
    recs = json.loads((pubmedqa_dir / "ori_pqal.json").read_text())
    test = json.loads((pubmedqa_dir / "test_ground_truth.json").read_text())
    train = {k: v for k, v in recs.items() if k not in test}
    data = home / "pqa24.json"
    data.write_text(json.dumps(dict(list(train.items())[:24])))
    cfg = FinetuneConfig().with_overrides(
        task={
            "name": "pubmedqa",
            "data": str(data),
            "context_sections": ["results"],
            "max_seq_length": 128,
            "eval_fraction": 0.25,
            "head_layer": [2, 4],
            "head_extra_views": ["long_answer"],
        }
    )
    return s, train_linear_head(cfg, s, home / "head", progress=False)


def test_linear_head_trains_loads_and_scores(head_run) -> None:  # type: ignore[no-untyped-def]
    import torch

    from medllm.eval.base import check_adapter
    from medllm.finetune.merge import merge
    from medllm.models import load_hf_model
    from medllm.scoring import score_options
    from medllm.scoring.heads import pooled_features

    s, res = head_run
    out = res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        "head.json",
        "metrics.json",
        "split.json",
    ]
    m = json.loads((out / "metrics.json").read_text())
    assert m["layer"] in (2, 4) and set(m["cv_accuracy_by_layer"]) == {"2", "4"}
    assert m["train_examples"] == 18 and m["eval_examples"] == 6
    assert m["train_extra_views"] == 18  # every PQA-L record has a long answer
    assert 0.0 <= m["eval_accuracy"] <= 1.0 and m["C"] in GRID
    head = LinearHead.load(out)
    assert head.layer == m["layer"]
    assert head.labels == ["yes", "no", "maybe"] and head.base == "smollm2-135m-instruct"

    model, tok, _ = load_hf_model("smollm2-135m-instruct", models_dir=s.paths.models_dir)
    prompts = ["Context: Results: mortality fell (p<0.01).\n\nQuestion: Does X work?", "Hi"]
    plain = score_options(model, tok, prompts, ["yes", "no", "maybe"])
    tuned_model, _, _ = load_hf_model(
        "smollm2-135m-instruct", models_dir=s.paths.models_dir, adapter=out
    )
    assert tuned_model.medllm_head == head
    tuned = score_options(tuned_model, tok, prompts, ["yes", "no", "maybe"])
    want = head.probabilities(
        pooled_features(model, tok, prompts, layer=head.layer, pooling="mean", max_length=128)
    )
    for row, w in zip(tuned, want, strict=True):  # the scorer's figures are the head's
        assert [round(row[o], 5) for o in ("yes", "no", "maybe")] == [round(float(v), 5) for v in w]
    assert tuned != plain
    assert abs(sum(score_options(tuned_model, tok, prompts, ["no", "yes"])[0].values()) - 1) < 1e-6
    with pytest.raises(ValueError, match="linear head scores"):
        score_options(tuned_model, tok, prompts, ["A", "B"])
    assert check_adapter(out, "smollm2-135m-instruct", s)["base"] == "smollm2-135m-instruct"
    with pytest.raises(MedllmError, match="nothing to merge"):
        merge(out, out.parent / "merged", settings=s)
    assert torch.equal(  # the LM's own weights are untouched
        tuned_model.lm_head.weight, model.lm_head.weight
    )


def test_linear_head_through_eval_cli(head_run, tmp_path: Path, pubmedqa_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from medllm.cli.main import app

    s, res = head_run
    out = tmp_path / "run"
    r = CliRunner().invoke(
        app,
        [
            "eval",
            "pubmedqa",
            "--mode",
            "gold-context",
            "--adapter",
            str(res.output),
            "--limit",
            "3",
            "--out",
            str(out),
        ],
        env={
            "MEDLLM_HOME": str(s.paths.home),
            "MEDLLM_EVAL__PUBMEDQA_DIR": str(pubmedqa_dir),
        },
    )
    assert r.exit_code == 0, r.output
    items = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
    assert len(items) == 3 and all(abs(sum(i["probs"].values()) - 1) < 1e-3 for i in items)
    ident = json.loads((out / "config.json").read_text())
    assert "results" in json.dumps(ident)  # scored on the head's own prompt format
    assert ident["adapter"]["kind"] == "linear-head" and "linear head" in ident["scorer"]
    assert "Scored by the adapter's linear head" in (out / "report.md").read_text()


def test_extra_views_train_but_never_validate() -> None:
    """Training-only views join a CV training fold only with their own example: copies of the
    validation rows would otherwise be memorised and inflate the CV score of pure noise."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 80))
    y = ["yes", "no"] * 30
    kw = {"base": "m", "pooling": "mean", "max_length": 64, "grid": (100.0,)}
    head, cv = fit_head(
        {2: x},
        y,
        ["yes", "no"],
        extra={2: x.copy()},
        extra_labels=y,
        extra_groups=list(range(60)),
        **kw,  # type: ignore[arg-type]
    )
    assert cv[2]["100.0"] < 0.7  # a leak would memorise: about 1.0
    with pytest.raises(ValueError, match="a label and a group each"):
        fit_head({2: x}, y, ["yes", "no"], extra={2: x}, extra_labels=y, **kw)  # type: ignore[arg-type]


def test_hidden_states_stop_early_but_match_the_full_pass(models_cache: Path) -> None:
    import torch

    from medllm.models import load_hf_model
    from medllm.scoring.heads import _hidden_states

    model, tok, _ = load_hf_model("smollm2-135m-instruct", models_dir=models_cache, device="cpu")
    enc = tok(["Is aspirin an anticoagulant?", "No."], return_tensors="pt", padding=True)
    with torch.no_grad():
        full = model(**enc, output_hidden_states=True).hidden_states
    calls: list[int] = []
    top = model.model.layers[-1].register_forward_hook(lambda *_: calls.append(1))
    try:
        got = _hidden_states(model, enc, [0, 7, 18])
        assert all(torch.equal(got[n], full[n]) for n in (0, 7, 18))
        assert calls == []  # the last decoder layer never ran
        last = len(full) - 1
        assert torch.equal(_hidden_states(model, enc, [last])[last], full[-1])  # after the norm
        assert calls == [1]
    finally:
        top.remove()
