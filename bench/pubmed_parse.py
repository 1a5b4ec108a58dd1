"""MEDLINE XML reader throughput: records/s of ``pubmed_xml.iter_file`` on a baseline-sized file.

    .venv/bin/python bench/pubmed_parse.py [--records 30000]

The file is synthetic but in the real shape: the fixture baseline's citations
(tests/fixtures/pubmed/src/pubmed25n0001.xml) repeated under new PMIDs up to --records
(an NLM baseline file holds ~30,000), gzipped like NLM's. Reports records/s and the peak RSS before
and after reading (the reader streams: it should not grow with the file), and writes
bench/out/pubmed_parse.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import resource
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"
SRC = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "pubmed" / "src"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=30_000)
    args = ap.parse_args()
    from medllm.pipelines import pubmed_xml as px

    xml = (SRC / "pubmed25n0001.xml").read_text()
    arts = re.findall(r"<PubmedArticle>.*?</PubmedArticle>", xml, flags=re.S)
    good = [a for a in arts if "9000x005" not in a and "20l2" not in a]
    head = xml[: xml.index("<PubmedArticleSet>") + len("<PubmedArticleSet>")]
    body = []
    for i in range(args.records):
        a = good[i % len(good)]
        body.append(re.sub(r"\b900000\d\d\b", str(10_000_000 + i), a))
    OUT.mkdir(exist_ok=True)
    path = OUT / "pubmed99n0001.xml.gz"
    with gzip.open(path, "wt", compresslevel=6) as fh:
        fh.write(head + "\n" + "\n".join(body) + "\n</PubmedArticleSet>\n")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    kinds: dict[str, int] = {}
    for ev in px.iter_file(path):
        kinds[type(ev).__name__] = kinds.get(type(ev).__name__, 0) + 1
    secs = time.perf_counter() - t0
    res = {
        "date": time.strftime("%Y-%m-%d"),
        "records": args.records,
        "events": kinds,
        "seconds": round(secs, 2),
        "records_per_s": round(args.records / secs, 1),
        "rss_before_mb": round(rss0, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(res, indent=1))
    (OUT / "pubmed_parse.json").write_text(json.dumps(res, indent=1))
    path.unlink()


if __name__ == "__main__":
    main()
