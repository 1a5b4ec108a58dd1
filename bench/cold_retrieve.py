"""Cold-process `medllm retrieve` time, and its ratio to `medllm --help`, in the same run.

    MEDLLM_HOME=DIR python bench/cold_retrieve.py [--reps 7] [--modes dense,bm25,hybrid]
        [--query "..."] [--before /path/to/other/checkout]

Needs a store in MEDLLM_HOME (`medllm ingest pubmedqa --source FILE`). Each repetition starts
fresh processes (`python -m medllm.cli.main ...` with this checkout first on PYTHONPATH,
HF_HUB_OFFLINE=1): `--help` once, then `retrieve QUERY --mode M --json` for each mode, in turn,
so that load changes on a shared machine hit all commands alike. "Cold" = a new interpreter;
the OS file cache stays warm (one untimed warm-up round first). Reports the median, min and
max wall time per command, retrieve / help ratios of the medians, and the load average before
and after. ``--before DIR`` times another checkout (e.g. the main branch) in the same rounds
and checks that both return the same documents and scores. Writes bench/out/cold_retrieve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LACE = "Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?"


def _env(checkout: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(checkout), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _run(python: str, checkout: Path, args: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(
        [python, "-m", "medllm.cli.main", *args],
        env=_env(checkout),
        cwd=checkout,
        capture_output=True,
        text=True,
        check=False,
    )
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{checkout}: medllm {' '.join(args)} failed:\n{res.stderr[-2000:]}")
    return dt, res.stdout


def _summary(xs: list[float]) -> dict[str, float]:
    return {
        "median_s": round(statistics.median(xs), 3),
        "min_s": round(min(xs), 3),
        "max_s": round(max(xs), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--modes", default="dense,bm25,hybrid")
    ap.add_argument("--query", default=LACE)
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--before", type=Path, help="another checkout to time in the same rounds")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "cold_retrieve.json")
    a = ap.parse_args()
    if not os.environ.get("MEDLLM_HOME"):
        raise SystemExit("set MEDLLM_HOME to a home with a store (medllm ingest ...)")

    modes = [m for m in a.modes.split(",") if m]
    checkouts = {"after": ROOT} | ({"before": a.before.resolve()} if a.before else {})
    commands: dict[str, list[str]] = {"help": ["--help"]}
    for m in modes:
        commands[f"retrieve {m}"] = ["retrieve", a.query, "-k", str(a.k), "--mode", m, "--json"]

    load_before = os.getloadavg()
    outputs: dict[tuple[str, str], Any] = {}
    times: dict[str, dict[str, list[float]]] = {c: {n: [] for n in commands} for c in checkouts}
    for rep in range(a.reps + 1):  # round 0: warm-up (file cache), not counted
        for c, path in checkouts.items():
            for name, args in commands.items():
                dt, out = _run(a.python, path, args)
                if rep > 0:
                    times[c][name].append(dt)
                if name != "help":
                    docs = json.loads(out)
                    outputs[(c, name)] = [(d["doc_id"], d["score"], d["similarity"]) for d in docs]
        if rep > 0:
            line = "  ".join(
                f"{c}:{n.replace('retrieve ', '')}={times[c][n][-1]:.2f}"
                for c in checkouts
                for n in commands
            )
            print(f"rep {rep}: {line}", flush=True)
    load_after = os.getloadavg()

    report: dict[str, Any] = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "query": a.query,
        "k": a.k,
        "reps": a.reps,
        "cpus": os.cpu_count(),
        "medllm_home": os.environ["MEDLLM_HOME"],
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
    }
    for c in checkouts:
        stats = {n: _summary(xs) for n, xs in times[c].items()}
        help_med = stats["help"]["median_s"]
        report[c] = {
            "checkout": str(checkouts[c]),
            "times": stats,
            "ratio_to_help": {
                n: round(s["median_s"] / help_med, 2) for n, s in stats.items() if n != "help"
            },
        }
    if "before" in checkouts:
        report["same_results"] = {
            n: outputs[("after", n)] == outputs[("before", n)] for n in commands if n != "help"
        }
        report["speedup"] = {
            n: round(
                report["before"]["times"][n]["median_s"] / report["after"]["times"][n]["median_s"],
                2,
            )
            for n in commands
            if n != "help"
        }
    print(json.dumps({k: v for k, v in report.items() if k != "query"}, indent=2))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
