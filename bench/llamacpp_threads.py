"""Why llama.cpp label scoring was slow here: one prompt under each llama.cpp setting (issue 12).

    .venv/bin/python bench/llamacpp_threads.py [--rounds 3] [--item 0]

One gold-context PubMedQA prompt (test split, item ``--item``: ~350 tokens) evaluated by the
packaged SmolLM2-135M-Instruct Q4_1 GGUF the way label scoring does it (``Llama.eval`` of the
whole prompt, logits of the last position only), and 64 greedy tokens generated, under:

* OpenMP waiting (the llama-cpp-python wheel's ggml runs its threads under libgomp, and every
  ggml graph node ends in a barrier — ~1,000 per forward pass): libgomp's default (spin ~3 ms
  at each barrier before sleeping; ``GOMP_SPINCOUNT=300000``) vs ``OMP_WAIT_POLICY=PASSIVE``
  (sleep at once) — read once when libgomp loads, so each is a child process, the children
  alternating ``--rounds`` times so that the machine's changing load hits both alike;
* inside each child, in turn on the same prompt: 2 threads (``n_threads = n_threads_batch =``
  the CPUs we may run on) vs 1; ``n_ubatch`` 512 vs 64; ``flash_attn``; ``use_extra_bufts``
  (weight repacking; it has no Q4_1 kernel) — with the largest change of the three option
  log-probabilities against the first setting (0.0 = the same numbers).

Prints one line per child and setting, and the load average; writes
bench/out/llamacpp-threads.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
PUBMEDQA = ROOT.parent / "shared" / "data" / "pubmedqa"
POLICIES = {
    "libgomp-default": {"GOMP_SPINCOUNT": "300000"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
}
SETTINGS: dict[str, dict[str, Any]] = {
    "2 threads": {},
    "1 thread": {"n_threads": 1, "n_threads_batch": 1},
    "n_ubatch 64": {"n_ubatch": 64},
    "flash_attn": {"flash_attn": True},
    "use_extra_bufts": {"extra_bufts": True},
}


def _load(gguf: str, extra_bufts: bool = False, **kw: Any) -> Any:
    import llama_cpp
    import llama_cpp.llama as lmod

    orig = llama_cpp.llama_model_default_params

    def params() -> Any:
        p = orig()
        p.use_extra_bufts = extra_bufts
        return p

    threads = len(os.sched_getaffinity(0))
    args = {"n_ctx": 2048, "n_threads": threads, "n_threads_batch": threads, "n_gpu_layers": 0}
    lmod.llama_cpp.llama_model_default_params = params  # type: ignore[attr-defined]
    try:
        return llama_cpp.Llama(model_path=gguf, verbose=False, **{**args, **kw})
    finally:
        lmod.llama_cpp.llama_model_default_params = orig  # type: ignore[attr-defined]


def child(item: int, reps: int) -> dict[str, Any]:
    import llama_cpp
    import numpy as np

    from medllm.config import Settings
    from medllm.eval.pubmedqa import pubmedqa_task
    from medllm.models import KNOWN_MODELS
    from medllm.models.llamacpp import _template, chat_formatter

    s = Settings.load(config_file=False, eval={"pubmedqa_dir": PUBMEDQA})
    it = pubmedqa_task(s, mode="gold-context").items[item]
    gguf = str(KNOWN_MODELS["smollm2-135m-instruct"].locate(Path("/nonexistent")))
    out: dict[str, Any] = {
        "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    }
    ref = None
    for name, kw in SETTINGS.items():
        lm = _load(gguf, **kw)
        render = chat_formatter(_template("smollm2-135m-instruct", dict(lm.metadata)))
        ids = lm.tokenize(render(it.messages or []).encode(), add_bos=True, special=True)
        opts = [lm.tokenize(f" {o}".encode(), add_bos=False)[0] for o in ("yes", "no", "maybe")]
        times = []
        for r in range(reps + 1):  # the first is a warm-up
            lm.n_tokens = 0
            t0 = time.perf_counter()
            lm.eval(ids)
            if r:
                times.append(time.perf_counter() - t0)
        ptr = llama_cpp.llama_get_logits_ith(lm.ctx, -1)
        lg = np.ctypeslib.as_array(ptr, shape=(lm.n_vocab(),)).astype(np.float64)
        lp = lg - (lg.max() + np.log(np.exp(lg - lg.max()).sum()))
        dmax = 0.0 if ref is None else float(np.abs(lp[opts] - ref).max())
        ref = lp[opts] if ref is None else ref
        row = {"prompt_tokens": len(ids), "prompt_s": statistics.median(times), "dlogp_max": dmax}
        row["prompt_tok_per_s"] = len(ids) / row["prompt_s"]
        if name in ("2 threads", "1 thread"):
            q = lm.tokenize(
                render([{"role": "user", "content": "What is aspirin used for?"}]).encode(),
                add_bos=True,
                special=True,
            )
            gens = []
            for _ in range(2):
                t0 = time.perf_counter()
                for n, _tok in enumerate(lm.generate(q, top_k=1, temp=0.0, reset=True), 1):
                    if n >= 64:
                        break
                gens.append(64 / (time.perf_counter() - t0))
            row["gen_tok_per_s"] = statistics.median(gens)
        row["loadavg_1min"] = os.getloadavg()[0]
        out[name] = row
        lm.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--item", type=int, default=0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.item, a.reps)))
        return
    runs: dict[str, list[Any]] = {p: [] for p in POLICIES}
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    for r in range(a.rounds):
        for pol, env in POLICIES.items():
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--item",
                str(a.item),
                "--reps",
                str(a.reps),
            ]
            proc = subprocess.run(
                cmd,
                env={**base, **env, "PYTHONPATH": str(ROOT)},
                capture_output=True,
                text=True,
                check=True,
            )
            d = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[pol].append(d)
            for name in SETTINGS:
                x = d[name]
                gen = f"  gen {x['gen_tok_per_s']:5.1f} tok/s" if "gen_tok_per_s" in x else ""
                print(
                    f"round {r} {pol:16s} {name:16s} prompt {x['prompt_s']:6.3f} s "
                    f"({x['prompt_tok_per_s']:5.0f} tok/s, {x['prompt_tokens']} tokens){gen}  "
                    f"dlogp {x['dlogp_max']:.3f}  load {x['loadavg_1min']:.2f}",
                    flush=True,
                )
    summary: dict[str, Any] = {}
    for pol, ds in runs.items():
        for name in SETTINGS:
            rows = [d[name] for d in ds]
            summary[f"{pol} / {name}"] = {
                "prompt_s_median": round(statistics.median(x["prompt_s"] for x in rows), 3),
                "gen_tok_per_s_median": (
                    round(statistics.median(x["gen_tok_per_s"] for x in rows), 1)
                    if "gen_tok_per_s" in rows[0]
                    else None
                ),
                "dlogp_max": max(x["dlogp_max"] for x in rows),
                "loadavg_1min": [round(x["loadavg_1min"], 2) for x in rows],
            }
    res = {"what": "one gold-context prompt, llama.cpp settings", "summary": summary, "runs": runs}
    res["command"] = " ".join([".venv/bin/python", "bench/llamacpp_threads.py", *sys.argv[1:]])
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "llamacpp-threads.json"
    path.write_text(json.dumps(res, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
