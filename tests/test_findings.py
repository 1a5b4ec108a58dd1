"""The quote of a cited abstract reports a finding, not the question restated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from medllm.agents.citations import best_sentence
from medllm.agents.findings import MODEL_PATH, finding_probs, section_labels
from medllm.agents.prompts import sentences

ROOT = Path(__file__).resolve().parents[1]


def test_a_structured_abstract_is_quoted_from_its_results() -> None:
    text = (
        "Objective: To determine whether early mobilisation shortens hospital stay after hip "
        "fracture surgery.\nMethods: We enrolled 212 patients in two hospitals.\n"
        "Results: Early mobilisation shortened the hospital stay by 2.1 days (p=0.01)."
    )
    q = "Does early mobilisation shorten hospital stay after hip fracture surgery?"
    # the objective shares the most words with the question; it answers nothing
    assert best_sentence(text, q).startswith("Results: Early mobilisation shortened")
    assert section_labels(sentences(text)) == ["OBJECTIVE", "METHODS", "RESULTS"]


def test_an_unstructured_abstract_is_quoted_from_its_findings() -> None:
    """No section labels: the learnt model rates the aim and the methods below the finding."""
    sents = [
        "Sepsis remains a leading cause of death in intensive care units.",
        "We aimed to determine whether drug X reduces mortality in patients with sepsis.",
        "We randomly assigned 400 patients to drug X or placebo.",
        "Drug X reduced 28-day mortality from 31% to 22% (p=0.003).",
        "These findings suggest that drug X reduces mortality in sepsis.",
    ]
    p = finding_probs(sents)
    assert max(p[:3]) < 0.5 < min(p[3:]), p
    q = "Does drug X reduce mortality in patients with sepsis?"
    assert best_sentence(" ".join(sents), q) == sents[4]


def test_abbreviations_and_spaced_decimals_do_not_end_a_sentence() -> None:
    text = (
        "Patients with schizophrenia had more deficiencies (13.3 vs. 11.2, P<0.001). "
        "It eliminates a minimum of 10. 4 cM around the gene, e.g. the SAA cluster. "
        "No. The answer is yes."
    )
    assert sentences(text) == [
        "Patients with schizophrenia had more deficiencies (13.3 vs. 11.2, P<0.001).",
        "It eliminates a minimum of 10. 4 cM around the gene, e.g. the SAA cluster.",
        "No.",
        "The answer is yes.",
    ]


def test_the_shipped_findings_model_is_what_its_script_fits(tmp_path: Path) -> None:
    """findings.json is reproducible from the shared PQA-L training abstracts (a change of the
    sentence splitter or the features without refitting fails here), and its cross-validated
    quotes come from results/conclusions far more often than the old choice's."""
    out = tmp_path / "findings.json"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_findings.py"), "--out", str(out)],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    fitted, shipped = json.loads(out.read_text()), json.loads(MODEL_PATH.read_text())
    assert fitted["words"].keys() == shipped["words"].keys()
    assert all(abs(fitted["words"][w] - v) < 1e-3 for w, v in shipped["words"].items())
    meta = fitted["meta"]
    assert meta["cv_auc"] > 0.9
    assert meta["cv_quotes_new"]["from_results_or_conclusions"] > 0.8
    assert meta["cv_quotes_old"]["from_results_or_conclusions"] < 0.2
    assert meta["cv_quotes_new"]["aim_phrased"] < 0.05
