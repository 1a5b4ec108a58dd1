"""One agent turn, end to end through `medllm ask`, against the SCRIPTED OpenAI-compatible
server of the tests (a stand-in for a capable tool-calling model, which cannot run here): the
trace the README shows.

    MEDLLM_HOME=... PYTHONPATH=. .venv/bin/python bench/agent_trace.py [--react]

Needs the PQA-L abstracts ingested in MEDLLM_HOME (`make demo` does it). The scripted model
searches, issues a keyword follow-up, reads one abstract in full, tries to read a PMID that is
not indexed, and answers citing one real and one invented PMID. Everything after the replayed
model replies is medllm's real code: the tools, the loop, the gate, citations, the answer.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from scripted_server import Script, ScriptedServer  # noqa: E402

QUESTION = (
    "Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?"
)
STEPS: list[dict[str, Any]] = [
    {
        "tool": "hybrid_search",
        "args": {"query": "mitochondria programmed cell death lace plant leaf remodelling"},
        "thought": "I need studies of mitochondria during PCD in lace plant leaves.",
    },
    {
        "tool": "bm25_search",
        "args": {"query": "Aponogeton madagascariensis mitochondrial dynamics", "k": 3},
        "thought": "Follow up with the species name and 'mitochondrial dynamics'.",
    },
    {
        "tool": "fetch_abstract",
        "args": {"pmid": "21645374"},
        "thought": "Read the best match in full.",
    },
    {"tool": "fetch_abstract", "args": {"pmid": "99999999"}, "thought": "And this one."},
    {
        "answer": "Yes: mitochondrial dynamics delineate PCD stages in lace plant leaves "
        "[PMID 21645374]; see also [PMID 12345678]."
    },
]
FINAL = (
    "Mitochondrial dynamics differ between cells that will die and cells that survive, which "
    "points to a role in remodelling [1]. PMID 12345678 reports the same."
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--react", action="store_true", help="a server without tool calling")
    args = ap.parse_args()
    srv = ScriptedServer({QUESTION: Script(steps=STEPS, final=FINAL)}).start()
    env = {**os.environ, "MEDLLM_API__TOOL_CALLING": "false" if args.react else "true"}
    cmd = [sys.executable, "-m", "medllm.cli.main", "ask", QUESTION, "--api-base", srv.url]
    cmd += ["--strategy", "agent", "--trace"] + (
        ["--json"] if os.environ.get("AGENT_TRACE_JSON") else []
    )
    try:
        print("$ medllm ask " + f'"{QUESTION}"' + " --api-base URL --strategy agent --trace")
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        print(r.stderr.rstrip())
        print(r.stdout.strip())
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
