"""The three model backends on the same model, in one run (issue 12).

    .venv/bin/python bench/backends.py scoring [--n 100]
    .venv/bin/python bench/backends.py rss --baseline-src DIR
    .venv/bin/python bench/backends.py agreement [--split test]

* ``scoring``: label-scoring items/s on the same ``--n`` gold-context PubMedQA items (test
  split order) — transformers (batched, ``eval.batch_size``), in-process llama.cpp, and
  llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server`` on 127.0.0.1, started
  here) — plus the label agreement of each with transformers. Loading is not timed.
* ``rss``: peak RSS (``wait4`` of a fresh process) of ``medllm ask --mode direct QUESTION``
  per backend, and of the code in ``--baseline-src`` (a checkout of the commit before issue 12,
  where the engine loaded a transformers copy for scoring beside llama.cpp) as the reference.
  For the server backend the client's RSS is reported and the server's own peak (VmHWM)
  beside it.
* ``agreement``: ``medllm eval pubmedqa --mode gold-context`` on the whole split on the
  llama.cpp and the transformers backends (run directories under bench/out/): accuracy,
  macro-F1 and per-item label agreement.

Writes bench/out/backends-<what>.json. The packaged SmolLM2-135M-Instruct everywhere: its fp32
dequantisation for transformers; for in-process llama.cpp the weights ``models.gguf_weights``
gives (default: a BF16/F16 copy of the Q4_1 file, medllm.models.gguf_float) and, with
``--as-is-too``, the Q4_1 file itself as a fourth row; the server serves the Q4_1 file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
PUBMEDQA = ROOT.parent / "shared" / "data" / "pubmedqa"
QUESTION = "Is aspirin effective for the secondary prevention of cardiovascular events?"
LABELS = ("yes", "no", "maybe")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: str = "smollm2-135m-instruct") -> tuple[subprocess.Popen[bytes], str]:
    from medllm.config import Settings
    from medllm.models.llamacpp import gguf_path

    gguf = gguf_path(model, Settings.load(config_file=False))
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--model_alias", "smollm2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("llama_cpp.server did not start")


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "date": str(date.today())}


def _label(p: dict[str, float]) -> str:
    return max(p, key=p.__getitem__)


def bench_scoring(
    n: int, batch: int = 8, model: str = "smollm2-135m-instruct", as_is_too: bool = False
) -> dict[str, Any]:
    """All three backends loaded, then the items in batches of ``batch``: each batch is scored
    by each backend in turn, so that a change in the machine's load hits all three alike."""
    from medllm.config import Settings
    from medllm.eval.pubmedqa import pubmedqa_task
    from medllm.models.llamacpp import LlamaCppBackend
    from medllm.models.openai_compat import OpenAICompatBackend
    from medllm.models.transformers import TransformersBackend

    s = Settings.load(config_file=False, eval={"pubmedqa_dir": PUBMEDQA})
    items = pubmedqa_task(s, mode="gold-context").items[:n]
    msgs = [it.messages or [] for it in items]
    gold = [it.gold for it in items]
    proc, url = start_server(model)
    try:
        backends: dict[str, Any] = {
            "transformers": TransformersBackend(model, settings=s),
            "llama-cpp": LlamaCppBackend(model, settings=s),
            **(
                {
                    "llama-cpp-as-is": LlamaCppBackend(
                        model, settings=s.with_overrides(models={"gguf_weights": "as-is"})
                    )
                }
                if as_is_too
                else {}
            ),
            "llama-cpp-server": OpenAICompatBackend(s.with_overrides(api={"base": url})),
        }
        seconds = dict.fromkeys(backends, 0.0)
        probs: dict[str, list[Any]] = {k: [] for k in backends}
        for b in backends.values():
            b.score_batch(msgs[:2], LABELS, batch_size=batch)  # warm-up
        for i in range(0, len(msgs), batch):
            for name, b in backends.items():
                t0 = time.perf_counter()
                probs[name] += b.score_batch(msgs[i : i + batch], LABELS, batch_size=batch)
                seconds[name] += time.perf_counter() - t0
            done = min(i + batch, len(msgs))
            print(done, {k: round(done / v, 3) for k, v in seconds.items()}, flush=True)
    finally:
        proc.terminate()
        proc.wait()
    preds = {k: [_label(p) for p in v] for k, v in probs.items()}
    results: dict[str, Any] = {}
    ref = len(msgs) / seconds["transformers"]
    for name in backends:
        ips = len(msgs) / seconds[name]
        results[name] = {
            "items": len(msgs),
            "seconds": round(seconds[name], 2),
            "items_per_s": round(ips, 3),
            "ratio_to_transformers": round(ips / ref, 2),
            "accuracy": round(sum(p == g for p, g in zip(preds[name], gold, strict=True)) / n, 3),
            "label_agreement_with_transformers": round(
                sum(a == b for a, b in zip(preds[name], preds["transformers"], strict=True)) / n,
                3,
            ),
            "items_with_floor": sum(bool(p.warnings) for p in probs[name]),
        }
    lc, srv = preds["llama-cpp"], preds["llama-cpp-server"]
    return {
        "what": "label scoring, gold-context PubMedQA (test split order), interleaved batches",
        "model": model,
        "n": n,
        "batch": batch,
        "results": results,
        "server_vs_inprocess_label_agreement": round(
            sum(a == b for a, b in zip(lc, srv, strict=True)) / n, 3
        ),
    }


def _peak_rss_mb(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    # cwd: not the checkout, whose medllm/ would shadow PYTHONPATH for `python -m`.
    proc = subprocess.Popen(
        cmd, env=env, cwd=env["MEDLLM_HOME"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, status, ru = os.wait4(proc.pid, 0)
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}): {err[-1500:]}")
    backend = json.loads(out).get("backend", "?")
    return ru.ru_maxrss / 1024, rc, backend


def bench_rss(baseline_src: Path) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="medllm-rss-"))
    ask = ["-m", "medllm.cli.main", "ask", QUESTION, "--mode", "direct", "--json"]
    base_env = {
        "PATH": os.environ.get("PATH", "/usr/bin"),
        "MEDLLM_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "MEDLLM_GENERATION__MAX_NEW_TOKENS": "32",
        "MEDLLM_MODELS__DEVICE": "cpu",
    }
    runs: dict[str, Any] = {}
    # Warm the conversion caches first: today's path converts the GGUF to safetensors on first
    # use, llama.cpp makes its float copy (models.gguf_weights) on first use.
    for warm in ("transformers", "llama-cpp"):
        subprocess.run(
            [sys.executable, *ask, "--backend", warm],
            env={**base_env, "PYTHONPATH": str(ROOT)},
            cwd=home,
            capture_output=True,
            check=True,
        )
    cases = [
        ("today (before issue 12, auto)", str(baseline_src), []),
        ("llama-cpp", str(ROOT), ["--backend", "llama-cpp"]),
        ("transformers", str(ROOT), ["--backend", "transformers"]),
    ]
    for name, src, extra in cases:
        mb, _, backend = _peak_rss_mb(
            [sys.executable, *ask, *extra], {**base_env, "PYTHONPATH": src}
        )
        runs[name] = {"peak_rss_mb": round(mb, 1), "answer_backend": backend}
        print(name, runs[name], flush=True)
    proc, url = start_server()
    try:
        mb, _, backend = _peak_rss_mb(
            [sys.executable, *ask, "--api-base", url], {**base_env, "PYTHONPATH": str(ROOT)}
        )
        status = Path(f"/proc/{proc.pid}/status").read_text()
        hwm = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM"))
        runs["openai-compatible (client)"] = {
            "peak_rss_mb": round(mb, 1),
            "answer_backend": backend,
            "server_peak_rss_mb": round(hwm / 1024, 1),
        }
        print("openai-compatible", runs["openai-compatible (client)"], flush=True)
    finally:
        proc.terminate()
        proc.wait()
    shutil.rmtree(home, ignore_errors=True)
    ref = runs["today (before issue 12, auto)"]["peak_rss_mb"]
    for r in runs.values():
        r["ratio_to_today"] = round(r["peak_rss_mb"] / ref, 2)
    return {"what": "peak RSS of `medllm ask --mode direct`", "runs": runs}


def bench_agreement(split: str) -> dict[str, Any]:
    runs = {}
    for backend in ("llama-cpp", "transformers"):
        out = OUT / f"backends-pubmedqa-{split}-{backend}"
        cmd = [sys.executable, "-m", "medllm.cli.main", "eval", "pubmedqa", "--mode",
               "gold-context", "--split", split, "--source", str(PUBMEDQA), "--backend", backend,
               "--out", str(out), "--fresh", "--json"]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        m = json.loads((out / "metrics.json").read_text())
        items = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
        runs[backend] = {
            "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"],
            "n": m["n"],
            "seconds": round(time.perf_counter() - t0, 1),
            "preds": {x["id"]: x["pred"] for x in items},
        }
    a, b = runs["llama-cpp"]["preds"], runs["transformers"]["preds"]
    agree = sum(a[k] == b[k] for k in b) / len(b)
    for r in runs.values():
        r.pop("preds")
    return {
        "what": f"gold-context PubMedQA, {split} split",
        "runs": runs,
        "label_agreement": round(agree, 4),
        "accuracy_gap_points": round(
            100 * (runs["llama-cpp"]["accuracy"] - runs["transformers"]["accuracy"]), 2
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["scoring", "rss", "agreement"])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--baseline-src", type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="scoring: a packaged model (smollm2-135m-instruct: Q4_1; gemma3-270m: Q4_K_M)",
    )
    ap.add_argument(
        "--as-is-too",
        action="store_true",
        help="scoring: also in-process llama.cpp on the GGUF file itself (gguf_weights as-is)",
    )
    a = ap.parse_args()
    if a.what == "scoring":
        res = bench_scoring(a.n, model=a.model, as_is_too=a.as_is_too)
    elif a.what == "rss":
        if a.baseline_src is None:
            raise SystemExit("rss needs --baseline-src (a checkout of the pre-issue-12 commit)")
        res = bench_rss(a.baseline_src)
    else:
        res = bench_agreement(a.split)
    res["machine"] = _machine()
    res["command"] = " ".join([".venv/bin/python", "bench/backends.py", *sys.argv[1:]])
    OUT.mkdir(parents=True, exist_ok=True)
    suffix = f"-{a.model}" if a.what == "scoring" and a.model != "smollm2-135m-instruct" else ""
    path = OUT / f"backends-{a.what}{suffix}.json"
    path.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
