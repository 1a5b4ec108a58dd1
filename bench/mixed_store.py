"""Build the `mixed` store: PQA-L plus every non-PubMedQA document in ../shared as distractors.

    MEDLLM_HOME=/tmp/mh python bench/mixed_store.py [--collection mixed]

PQA-L (1,000 abstracts) + the NCBI-disease abstracts (title + text, id = PMID) + the NLI4CT
clinical-trial reports (every section, id = NCT number), ingested through `medllm ingest`
into one collection (~3 min on 2 cores). bench/gate_rerank.py and bench/fusion_grid.py then
measure hybrid hit@1 of the PQA-L questions on it (issue 13's distractor target).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ncbi_records(path: Path) -> list[dict[str, str]]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            text = f"{r['title']}\n{r['text']}"
            out.append({"id": str(r["pmid"]), "text": text, "source": "ncbi"})
    return out


def nli4ct_records(folder: Path) -> list[dict[str, str]]:
    out = []
    for f in sorted(folder.glob("*.json")):
        d = json.loads(f.read_text())
        parts = []
        for key, val in d.items():
            if key == "Clinical Trial ID":
                continue
            lines = val if isinstance(val, list) else [str(val)]
            parts.append(f"{key}:\n" + "\n".join(s.strip() for s in lines if str(s).strip()))
        out.append({"id": d["Clinical Trial ID"], "text": "\n\n".join(parts), "source": "nli4ct"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared/data"))
    ap.add_argument("--collection", default="mixed")
    args = ap.parse_args()
    data = Path(args.shared)
    medllm = [sys.executable, "-m", "medllm.cli.main", "ingest"]
    col = ["--collection", args.collection]
    subprocess.run([*medllm, "pubmedqa", "--source", str(data / "pubmedqa"), *col], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "distractors.jsonl"
        recs = ncbi_records(data / "ncbi-disease/abstracts.jsonl")
        recs += nli4ct_records(data / "nli4ct/ct_json")
        f.write_text("".join(json.dumps(r) + "\n" for r in recs))
        print(f"{len(recs)} distractor documents", file=sys.stderr)
        subprocess.run([*medllm, "files", str(f), *col], check=True)


if __name__ == "__main__":
    main()
