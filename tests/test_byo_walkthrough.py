""" "Bring your own model", walked through as a user with a served model would.

A REAL llama.cpp server (``python -m llama_cpp.server --config_file``) on 127.0.0.1 serves the
packaged SmolLM2 GGUF under three names: ``smol-a`` and ``smol-b`` (2,048-token context: two
"different" served models, as after switching the model in Ollama or vLLM) and ``smol-tiny``
(a 256-token context no medllm prompt fits). What the walkthrough found:

* the calibration of a served GGUF (llama.cpp's server names a model by its path) was looked
  up under a key that depended on medllm's working directory;
* a model without calibration was told to run a plain ``medllm calibrate``, which measures
  the configured default model, not the server's (or a ``--model`` path);
* ``eval pubmedqa --mode rag`` and ``eval yesno`` over a server named their run (directory and
  identity) after ``models.llm``, not the served model: a run with another served model resumed
  the first one's answers;
* a prompt longer than the server's context gave the server's 400 cut mid-sentence, without
  the fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_server as ls
import pytest
from agents_support import LACE, LACE_PMID, agent_env
from typer.testing import CliRunner

from medllm.config import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One llama.cpp server, three model names; its /v1 URL."""
    port = ls.free_port()
    d = tmp_path_factory.mktemp("byo-server")
    model = {"model": str(ls.packaged_gguf()), "n_threads": 2}
    cfg = {
        "host": "127.0.0.1",
        "port": port,
        "models": [
            {**model, "model_alias": "smol-a", "n_ctx": 2048},
            {**model, "model_alias": "smol-b", "n_ctx": 2048},
            {**model, "model_alias": "smol-tiny", "n_ctx": 256},
        ],
    }
    (d / "config.json").write_text(json.dumps(cfg))
    with ls.running(["--config_file", str(d / "config.json")], port, d / "server.log") as url:
        yield url


@pytest.fixture
def home(
    tmp_path_factory: Any, models_cache: Path, pubmedqa_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The shared small PQA-L store (40 abstracts), short prompts and answers."""
    env = agent_env(tmp_path_factory, models_cache, pubmedqa_dir)
    monkeypatch.setenv("MEDLLM_HOME", str(env["home"]))
    monkeypatch.setenv("MEDLLM_RETRIEVAL__TOP_K", "2")
    monkeypatch.setenv("MEDLLM_GENERATION__MAX_NEW_TOKENS", "16")
    return Path(env["home"])


def _cli(*args: str) -> Any:
    from medllm.cli.main import app

    return CliRunner().invoke(app, list(args))


# --------------------------------------------------------------------------- calibration key


def test_a_served_models_calibration_key_does_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama.cpp's server lists a model by the path it was started with. `medllm calibrate`
    run in the server's directory (where that relative path exists) and `medllm ask` run
    elsewhere must find the same calibration file."""
    from medllm.scoring.calibrate import scorer_key

    s = Settings.load(config_file=False, api={"base": "http://127.0.0.1:1/v1"})
    rel = os.path.relpath(ls.packaged_gguf(), ROOT)  # ".venv/lib/.../SmolLM2-...Q4_1.gguf"
    monkeypatch.chdir(ROOT)
    assert Path(rel).is_file()
    here = scorer_key(s, rel)
    monkeypatch.chdir(tmp_path)
    assert scorer_key(s, rel) == here == scorer_key(s, str(ls.packaged_gguf()))
    assert here.startswith("server-smollm2-135m-instruct.q4_1.gguf__")
    # a hub-style id is never looked up on the local disk either
    (tmp_path / "meta-llama" / "Llama-3.1-8B-Instruct").mkdir(parents=True)
    hub = scorer_key(s, "meta-llama/Llama-3.1-8B-Instruct")
    monkeypatch.chdir(ROOT)
    assert hub == scorer_key(s, "meta-llama/Llama-3.1-8B-Instruct")
    assert hub.startswith("server-meta-llama--llama-3.1-8b-instruct__")


# --------------------------------------------------------------------------- the real server


def test_uncalibrated_models_are_told_the_calibrate_command_that_measures_them(
    served: str, home: Path
) -> None:
    r = _cli("ask", LACE, "--api-base", served, "--api-model", "smol-a", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["backend"] == "openai-compatible" and d["label_withheld"] == "uncalibrated"
    assert f"medllm calibrate --api-base {served} --api-model smol-a" in d["label_note"]

    gguf = str(ls.packaged_gguf())  # the in-process llama.cpp backend on a GGUF path
    r = _cli("ask", LACE, "--model", gguf, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["backend"] == "llama-cpp" and d["label_withheld"] == "uncalibrated"
    assert f"medllm calibrate --model {gguf}" in d["label_note"]


def test_engine_evals_over_a_server_are_named_and_kept_apart_by_the_served_model(
    served: str, home: Path, tmp_path: Path
) -> None:
    from medllm.scoring.calibrate import PACKAGED_DIR, scorer_key

    data = tmp_path / "tiny.jsonl"
    rows = [
        {"id": "lace", "question": LACE, "answer": "yes", "gold": [LACE_PMID]},
        {"id": "mars", "question": "Is there liquid water under the south pole of Mars?",
         "answer": "no"},
    ]  # fmt: skip
    data.write_text("".join(json.dumps(x) + "\n" for x in rows))
    # smol-a has a calibration (the packaged model's numbers, saved under the served name)
    s = Settings.load(api={"base": served, "model": "smol-a"})
    key = scorer_key(s, "smol-a")
    cal = json.loads((PACKAGED_DIR / "smollm2-135m-instruct__engine-rag-v1.json").read_text())
    (home / "calibration").mkdir(exist_ok=True)
    (home / "calibration" / f"{key}.json").write_text(json.dumps({**cal, "scorer": key}))

    runs = {}
    for name in ("smol-a", "smol-b"):
        r = _cli("eval", "yesno", "--data", str(data), "--no-generate", "--json",
                 "--api-base", served, "--api-model", name)  # fmt: skip
        assert r.exit_code == 0, r.output
        run = Path(json.loads(r.stdout)["run_dir"])
        ident = json.loads((run / "config.json").read_text())["identity"]
        items = [json.loads(x) for x in (run / "items.jsonl").read_text().splitlines()]
        assert name in run.name and "openai-compatible" in run.name, run.name
        assert ident["model"] == name and ident["backend"] == "openai-compatible"
        assert len(items) == 2  # asked here, not resumed from another model's run
        runs[name] = (run, ident)
    assert runs["smol-a"][0] != runs["smol-b"][0]
    assert runs["smol-a"][1]["label_calibration"] == key  # the one its answers used
    assert runs["smol-b"][1]["label_calibration"] is None


def test_a_prompt_longer_than_the_servers_context_says_so_and_how_to_fix_it(
    served: str, home: Path
) -> None:
    r = _cli("ask", LACE, "--api-base", served, "--api-model", "smol-tiny")
    assert r.exit_code == 1, r.output
    assert "does not fit the context window of the model served at" in r.stderr, r.stderr
    assert "maximum context length is 256 tokens" in r.stderr
    assert "--n_ctx" in r.stderr and "-k" in r.stderr
    assert r.stderr.count("error:") == 1 and "Traceback" not in r.output


@pytest.mark.parametrize(
    "args",
    [
        ["ask", LACE, "--api-base", "http://127.0.0.1:9/v1"],
        ["chat", "--api-base", "http://127.0.0.1:9/v1"],
        ["generate", "Name one symptom of anemia."],  # api.base from the environment
        ["calibrate", "--limit", "20"],
        ["eval", "yesno", "--data", "x.jsonl"],
    ],
)
def test_a_model_flag_the_server_backend_would_ignore_is_refused(
    args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With api.base set (a flag, medllm.toml or MEDLLM_API__BASE), the served model answers:
    `--model gemma3-270m` used to be dropped without a word, and the server's model answered
    (and was evaluated) in its place."""
    monkeypatch.setenv("MEDLLM_API__BASE", "http://127.0.0.1:9/v1")  # nothing listens there
    r = _cli(*args, "--model", "gemma3-270m")
    assert r.exit_code == 2, r.output
    assert "--model gemma3-270m is not used with the server backend" in r.stderr
    assert "--api-model" in r.stderr and "--backend llama-cpp" in r.stderr
    assert "Traceback" not in r.output


def test_models_says_the_server_answers_not_models_llm(monkeypatch: pytest.MonkeyPatch) -> None:
    """`medllm models` with api.base set said "models.llm 'smollm2-135m-instruct' runs on:
    openai-compatible", as if the packaged model ran on the server."""
    monkeypatch.setenv("MEDLLM_API__BASE", "http://127.0.0.1:9/v1")
    r = _cli("models")
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())
    assert "answers come from the server at http://127.0.0.1:9/v1" in text
    assert "models.llm 'smollm2-135m-instruct' is not used" in text
    assert "runs on: openai-compatible" not in text
    monkeypatch.setenv("MEDLLM_API__MODEL", "llama3.1:8b")
    assert "model: 'llama3.1:8b'" in " ".join(_cli("models").stdout.split())
