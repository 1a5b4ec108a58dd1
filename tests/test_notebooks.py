"""Execute every notebook in notebooks/ top to bottom in its small CI configuration.

Run with ``make test-notebooks`` (``pytest -m notebooks``); ``make test`` leaves them out.
Each notebook has one cell tagged ``parameters``; like papermill, the runner inserts a cell
after it (tagged ``injected-parameters``) that sets the CI sizes, then runs the notebook with
nbclient in a fresh kernel whose ``MEDLLM_HOME`` is this test's temporary home (converted models
shared with the rest of the session, see conftest.py). The checks that need no kernel (outputs
stripped, exactly one parameters cell, the top cell says what it shows and how long it takes)
run in the default suite.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
FIXTURE_NLI = ROOT / "tests" / "fixtures" / "finetune" / "mednli_small.jsonl"
EXPECTED = {"01_rag_pubmedqa", "02_finetune_nli", "03_encoder_nli", "04_agentic_chat"}


def ci_parameters(name: str, pubmedqa_dir: Path) -> dict[str, Any]:
    """The small configuration CI runs (every name must exist in the parameters cell)."""
    return {
        "01_rag_pubmedqa": {
            "PUBMEDQA_DIR": str(pubmedqa_dir),
            "N_ABSTRACTS": 40,
            "N_RETRIEVAL": 20,
            "N_EVAL": 10,
            "N_PLOT": 40,
            "N_ASK": 1,
            "TOP_K": 2,
            "MAX_NEW_TOKENS": 24,
        },
        "02_finetune_nli": {
            "NLI_TRAIN": str(FIXTURE_NLI),
            "MAX_STEPS": 4,
            "BATCH_SIZE": 4,
        },
        "03_encoder_nli": {"NLI_TRAIN": str(FIXTURE_NLI), "EPOCHS": 3},
        "04_agentic_chat": {
            "PUBMEDQA_DIR": str(pubmedqa_dir),
            "N_ABSTRACTS": 40,
            "TOP_K": 2,
            "MAX_NEW_TOKENS": 24,
        },
    }[name]


def _read(path: Path) -> Any:
    import nbformat

    return nbformat.read(path, as_version=4)


def _parameters_cell(nb: Any) -> int:
    idx = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(idx) == 1, f"expected one cell tagged 'parameters', found {len(idx)}"
    return idx[0]


def _kernel_cpu_s(cell: Any) -> float:
    """The timing cell's figure, or -1. The kernel may split one print over several stream
    messages (a background thread flushing in between), so join them before parsing."""
    text = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
    m = re.search(r"kernel-cpu-s\s+([0-9.]+)", text)
    return float(m.group(1)) if m else -1.0


def _assigned(source: str) -> set[str]:
    return set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*=", source, flags=re.M))


def test_all_notebooks_present() -> None:
    assert {p.stem for p in NOTEBOOKS} == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped_and_parameterised(path: Path, pubmedqa_dir: Path) -> None:
    nb = _read(path)
    for i, c in enumerate(nb.cells):
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None, f"{path.name} cell {i}: outputs"
    top = nb.cells[0]
    assert top.cell_type == "markdown" and "Time on a CPU" in top.source
    params = nb.cells[_parameters_cell(nb)]
    missing = set(ci_parameters(path.stem, pubmedqa_dir)) - _assigned(params.source)
    assert not missing, f"CI sets {missing}, which the parameters cell does not define"
    # Logic lives in the package: no notebook defines classes, and it imports medllm.
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "from medllm" in text and not re.search(r"^class ", text, flags=re.M)


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(
    path: Path, tmp_path: Path, medllm_home: Path, pubmedqa_dir: Path
) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = _read(path)
    i = _parameters_cell(nb)
    values = ci_parameters(path.stem, pubmedqa_dir)
    src = "# Injected by tests/test_notebooks.py (CI sizes)\n" + "\n".join(
        f"{k} = {v!r}" for k, v in values.items()
    )
    cell = nbformat.v4.new_code_cell(src)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(i + 1, cell)
    # Last, the kernel's CPU seconds: on a contended machine a better guide than wall time.
    cpu = nbformat.v4.new_code_cell("import os\nprint('kernel-cpu-s', sum(os.times()[:2]))")
    cpu.metadata["tags"] = ["injected-timing"]
    nb.cells.append(cpu)
    env_ok = os.environ.get("MEDLLM_HOME") == str(medllm_home)
    assert env_ok  # the kernel inherits this environment: everything lands in tmp_path
    t0 = time.perf_counter()
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    elapsed = time.perf_counter() - t0
    out = tmp_path / f"{path.stem}.executed.ipynb"
    nbformat.write(nb, out)
    cpu_s = _kernel_cpu_s(nb.cells[-1])
    print(f"{path.name}: executed in {elapsed:.1f} s wall, kernel CPU {cpu_s:.1f} s ({out})")
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.get("output_type") == "error"
    ]
    assert not errors
    if path.stem == "01_rag_pubmedqa":  # the t-SNE figure itself, not only saved report plots
        tsne = next(c for c in nb.cells if c.cell_type == "code" and "TSNE(" in c.source)
        assert any("image/png" in o.get("data", {}) for o in tsne.outputs), "t-SNE not shown"
    # Plots are rendered (01: t-SNE, 03: confusion matrix; 02: loss and confusion images).
    if path.stem in ("01_rag_pubmedqa", "02_finetune_nli", "03_encoder_nli"):
        assert any(
            "image/png" in o.get("data", {})
            for c in nb.cells
            if c.cell_type == "code"
            for o in c.outputs
        ), "no plot was rendered"
