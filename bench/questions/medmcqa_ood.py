"""Write an out-of-corpus hold-out from MedMCQA dev: exam questions PQA-L has no evidence for.

    python bench/questions/medmcqa_ood.py [--n 150] > /tmp/medmcqa_ood.jsonl
    medllm eval yesno --data /tmp/medmcqa_ood.jsonl --collection pubmedqa --no-generate

The first ``n`` questions of ../shared/data/medmcqa/dev_single_answer.jsonl (file order) whose
text ends with "?" (a question a user could type; stems such as "...best advice to her is"
are skipped). No answer field: the engine should abstain on them, and only coverage /
abstention are scored. Written to stdout, not into the project (the data stay in ../shared).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

ap = argparse.ArgumentParser()
ap.add_argument("--src", default=str(ROOT.parent / "shared/data/medmcqa/dev_single_answer.jsonl"))
ap.add_argument("--n", type=int, default=150)
args = ap.parse_args()
n = 0
for line in Path(args.src).read_text().splitlines():
    rec = json.loads(line)
    q = " ".join(str(rec["question"]).split())
    if q.endswith("?") and n < args.n:
        print(json.dumps({"id": f"medmcqa-{rec['realidx']}", "question": q}))
        n += 1
