from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from medllm import __version__
from medllm.cli.main import app

runner = CliRunner()


def test_cli_import_is_light() -> None:
    code = (
        "import sys, medllm.cli.main; "
        "heavy = [m for m in ('torch', 'transformers', 'chromadb', 'llama_index') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_and_version() -> None:
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "generate" in r.output and "models" in r.output
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output
    # command lists show each summary as one paragraph (the docstrings' line breaks showed)
    groups = [g.typer_instance for g in app.registered_groups if g.typer_instance]
    infos = [c for t in [app, *groups] for c in t.registered_commands]
    assert infos and all(c.short_help and "\n" not in c.short_help for c in infos)
    models = next(c for c in app.registered_commands if c.name == "models")
    assert models.short_help == (
        "List known models and the backends: what is available here, what each supports, and "
        "which backend the configured model runs on."
    )


def test_config_show_json_and_toml(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MEDLLM_RETRIEVAL__TOP_K", "4")
    r = runner.invoke(app, ["config", "show", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["retrieval"]["top_k"] == 4
    r = runner.invoke(app, ["--preset", "fast", "config", "show"])
    assert r.exit_code == 0 and "[models]" in r.stdout and 'backend = "llama-cpp"' in r.stdout


def test_config_unknown_key_is_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.toml"
    bad.write_text("[models]\nllmm = 'x'\n")
    r = runner.invoke(app, ["--config", str(bad), "config", "show"])
    assert r.exit_code == 2
    assert "llmm" in r.stderr and "Traceback" not in r.output
    # one line naming the setting, where it came from and what was meant; no pydantic text
    assert f"unknown setting models.llmm (in {bad}); did you mean models.llm?" in " ".join(
        r.stderr.split()
    )
    assert "errors.pydantic.dev" not in r.stderr


def test_bad_values_name_their_source(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MEDLLM_RETRIEVAL__TOP_K", "abc")
    r = runner.invoke(app, ["config", "show"])
    text = " ".join(r.stderr.split())
    assert r.exit_code == 2 and "retrieval.top_k = 'abc'" in text
    assert "(from environment variable MEDLLM_RETRIEVAL__TOP_K)" in text
    monkeypatch.delenv("MEDLLM_RETRIEVAL__TOP_K")
    r = runner.invoke(app, ["ask", "x?", "--backend", "bogus"])
    text = " ".join(r.stderr.split())
    assert r.exit_code == 2 and "models.backend = 'bogus'" in text
    assert "(from a command-line option)" in text and "errors.pydantic.dev" not in text


def test_models_json_lists_packaged_models() -> None:
    r = runner.invoke(app, ["models", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert {"smollm2-135m-instruct", "all-minilm-l6-v2"} <= set(rows)
    assert rows["smollm2-135m-instruct"]["available"] is True
    assert rows["all-minilm-l6-v2"]["kind"] == "embedding"
    # the packaged Gemma is a base model: said, so its rambling free text is no surprise
    assert rows["smollm2-135m-instruct"]["tuning"] == "instruct"
    assert rows["gemma3-270m"]["tuning"] == "base"
    r = runner.invoke(app, ["models"])
    assert "gemma3-270m: base model (not instruction-tuned)" in " ".join(r.stdout.split())


def test_generate_json_and_errors() -> None:
    r = runner.invoke(
        app, ["generate", "Name one symptom of anemia.", "--max-new-tokens", "12", "--json"]
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["text"].strip() and data["model"] == "smollm2-135m-instruct"
    r = runner.invoke(app, ["generate", "hello", "--model", "google/gemma-2b-it"])
    assert r.exit_code == 1 and "google/gemma-2b-it" in r.stderr
    assert "Traceback" not in r.output
    r = runner.invoke(app, ["generate", "   "])
    assert r.exit_code == 2


def test_calibrate_takes_the_backend_flags(pubmedqa_dir, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The README says `medllm calibrate --api-base …` measures a served model; the flag was
    missing ("No such option"). Here it reaches the server path (nothing listens on port 9)."""
    monkeypatch.setenv("MEDLLM_HOME", str(tmp_path))
    r = CliRunner().invoke(
        app,
        ["calibrate", "--api-base", "http://127.0.0.1:9/v1", "--source", str(pubmedqa_dir)],
    )
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "cannot reach the OpenAI-compatible server at http://127.0.0.1:9/v1" in r.output
