"""Fine-tuning benchmarks (CPU by default).

speed:    QLoRA (NF4 base) vs plain fp32 LoRA on SmolLM2-135M-Instruct, same data, same steps,
          measured in the same run: tokens/s, peak RSS, final eval loss. Each variant runs in
          its own process so peak RSS is its own.
pubmedqa: base vs fine-tuned SmolLM2 on the 500 official PubMedQA test questions with the gold
          context, labels scored with medllm.scoring.score_options (likelihood, or the
          adapter's linear head), and — when the adapter kept a held-out fold of TRAINING
          items (never test) — also calibrated with fit_bias on that fold; accuracy and
          macro-F1 with bootstrap 95% intervals.

    python bench/finetune.py speed --steps 20
    python bench/finetune.py pubmedqa --adapter ~/.local/share/medllm/adapters/smollm2-... \
        [--limit N]

Writes JSON to bench/out/ and prints the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "out"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pubmedqa"


def _one_speed(quant: str, steps: int, pubmedqa_dir: str) -> dict:
    from medllm.config import Settings
    from medllm.finetune.config import load_config
    from medllm.finetune.train import run

    s = Settings.load(config_file=False, eval={"pubmedqa_dir": pubmedqa_dir})
    cfg = load_config("smollm2_135m_qlora_cpu").with_overrides(
        backend={"backend": "peft"},
        train={"max_steps": steps, "save_steps": 10_000, "logging_steps": max(steps // 5, 1)},
        task={"eval_fraction": 0.05},
    )
    cfg.model.quantization = None if quant == "fp32" else "nf4"
    out = s.paths.home / "bench-adapters" / quant
    m = run(cfg, s, out, overwrite=True, progress=False).metrics
    keys = ("tokens_per_s", "peak_rss_mb", "final_eval_loss", "train_runtime_s", "global_step")
    return {k: m[k] for k in keys}


def speed(args: argparse.Namespace) -> None:
    results = {}
    for quant in ("nf4", "fp32"):
        code = (
            "import json,sys; sys.path.insert(0, 'bench'); from finetune import _one_speed; "
            f"print('RESULT', json.dumps(_one_speed({quant!r}, {args.steps}, {args.data!r})))"
        )
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if p.returncode or not line:
            sys.exit(f"{quant} run failed:\n{p.stderr[-3000:]}")
        results[quant] = json.loads(line[0][7:])
        print(quant, results[quant], flush=True)
    r = results["nf4"]["tokens_per_s"] / results["fp32"]["tokens_per_s"]
    report = {
        "bench": "finetune-speed",
        "machine": _machine(),
        "steps": args.steps,
        "results": results,
        "qlora_over_lora_tokens_per_s": r,
    }
    _write("finetune_speed.json", report)
    print(f"QLoRA/LoRA tokens/s ratio: {r:.2f}")


def _bootstrap(gold: list[str], pred: list[str]) -> dict:
    from medllm.finetune.tasks import PUBMEDQA_OPTIONS as O
    from medllm.metrics import accuracy, bootstrap_ci, macro_f1

    return {
        "accuracy": accuracy(gold, pred),
        "accuracy_ci": list(bootstrap_ci(gold, pred, O, statistic=accuracy)),
        "macro_f1": macro_f1(gold, pred, O),
        "macro_f1_ci": list(bootstrap_ci(gold, pred, O)),
        "predicted": {o: pred.count(o) for o in O},
    }


def _argmax_with_bias(p: dict, bias: list[float], options: tuple[str, ...]) -> str:
    import math

    return max(options, key=lambda o: math.log(max(p[o], 1e-12)) + bias[options.index(o)])


def pubmedqa(args: argparse.Namespace) -> None:
    from medllm import pubmedqa as pq
    from medllm.config import Settings
    from medllm.finetune.config import load_config
    from medllm.finetune.tasks import PUBMEDQA_OPTIONS, pubmedqa_messages
    from medllm.models import load_llm
    from medllm.scoring import chat_prompt, fit_bias, hf_parts, score_options

    adapter = Path(args.adapter).expanduser()
    cfg = load_config(adapter / "config.yaml")
    data = Path(args.data)
    recs = {r.pmid: r for r in pq.load(data / "ori_pqal.json").records}
    test = pq.load_test_pmids(data / "test_ground_truth.json")
    held = json.loads((adapter / "split.json").read_text())["eval"]
    assert not set(held) & set(test), "calibration fold overlaps the test set"
    test_ids = sorted(test)[: args.limit] if args.limit else sorted(test)
    s = Settings.load(config_file=False)
    rows: dict[str, dict[str, Any]] = {}
    for name, ad in (("base", None), ("fine-tuned", adapter)):
        llm = load_llm(cfg.model.name, adapter=ad, settings=s, backend="transformers")
        model, tok = hf_parts(llm)

        def prompts(ids: list[str], tok=tok) -> list[str]:  # type: ignore[no-untyped-def]
            return [
                chat_prompt(
                    tok,
                    pubmedqa_messages(
                        recs[i].question,
                        recs[i].sections_text(cfg.task.context_sections),
                        max_context_words=cfg.task.max_context_words,
                        system=cfg.task.system_prompt,
                    ),
                )
                for i in ids
            ]

        t0 = time.perf_counter()
        pt = score_options(model, tok, prompts(test_ids), PUBMEDQA_OPTIONS, progress=True)
        gold = [test[i] for i in test_ids]
        raw = [max(p, key=p.__getitem__) for p in pt]
        rows[name] = {"uncalibrated": _bootstrap(gold, raw)}
        if held:
            pv = score_options(model, tok, prompts(held), PUBMEDQA_OPTIONS, progress=True)
            held_gold = [str(recs[i].final_decision) for i in held]
        for objective in dict.fromkeys([args.objective, "accuracy", "macro_f1"] if held else []):
            bias = fit_bias(pv, held_gold, PUBMEDQA_OPTIONS, objective=objective)
            cal = [_argmax_with_bias(p, bias, PUBMEDQA_OPTIONS) for p in pt]
            key = "calibrated" if objective == args.objective else f"calibrated_{objective}"
            rows[name][key] = {**_bootstrap(gold, cal), "bias": bias, "objective": objective}
        rows[name]["test_probs"] = {i: p for i, p in zip(test_ids, pt, strict=True)}
        rows[name]["seconds"] = time.perf_counter() - t0
        shown = {k: v for k, v in rows[name].items() if k != "test_probs"}
        print(name, json.dumps(shown), flush=True)
    report = {
        "bench": "pubmedqa-finetune",
        "machine": _machine(),
        "adapter": str(adapter),
        "n_test": len(test_ids),
        "n_calibration": len(held),
        "majority_baseline": max(gold.count(o) for o in PUBMEDQA_OPTIONS) / len(gold),
        "results": rows,
    }
    _write("finetune_pubmedqa.json", report)


def _machine() -> str:
    import os

    return f"{platform.machine()} {os.cpu_count()} CPU, {time.strftime('%Y-%m-%d')}"


def _write(name: str, report: dict) -> None:
    OUT.mkdir(exist_ok=True)
    (OUT / name).write_text(json.dumps(report, indent=2))
    print(f"wrote {OUT / name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("speed")
    sp.add_argument("--steps", type=int, default=20)
    sp.add_argument("--data", default=str(SHARED))
    sp.set_defaults(func=speed)
    pp = sub.add_parser("pubmedqa")
    pp.add_argument("--adapter", required=True)
    pp.add_argument("--data", default=str(SHARED))
    pp.add_argument("--limit", type=int, default=None, help="First N test PMIDs only.")
    pp.add_argument("--objective", default="accuracy", choices=["accuracy", "macro_f1"])
    pp.set_defaults(func=pubmedqa)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
