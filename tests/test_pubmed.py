"""MEDLINE/PubMed XML ingestion and metadata filters, on the fixtures in tests/fixtures/pubmed
(written in the shape of NLM's pubmed_250101.dtd; rebuilt by make_fixtures.py):

* baseline/pubmed25n0001.xml.gz (+ .md5): 4 abstracts (90000001-3, 90000005), one citation
  without abstract (90000004), a non-numeric PMID and an impossible year (rejected), a book;
* updates/pubmed25n0002.xml (plain XML): 90000002 revised, 90000007 new, DeleteCitation of
  90000003 (stored) and 99999999 (never stored);
* broken/pubmed25n0003.xml.gz: cut off part-way (90000008 and some filler records complete).

Real MiniLM and a real Chroma under the test's MEDLLM_HOME."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medllm.config import Settings
from medllm.errors import DataError, StoreError
from medllm.pipelines import pubmed_xml as px
from medllm.storage import filters

FIX = Path(__file__).parent / "fixtures" / "pubmed"
BASE = FIX / "baseline" / "pubmed25n0001.xml.gz"
UPD = FIX / "updates" / "pubmed25n0002.xml"
BROKEN = FIX / "broken" / "pubmed25n0003.xml.gz"


@pytest.fixture(scope="module")
def embed() -> Any:
    from medllm.models import load_embedding

    return load_embedding(settings=Settings.load(config_file=False))


def _settings() -> Settings:
    return Settings.load(config_file=False, retrieval={"collection": "pm"})


def _ingest(paths: list[Path], embed: Any) -> Any:
    from medllm.pipelines.pubmed_ingest import ingest_pubmed

    return ingest_pubmed(_settings(), paths, embed_model=embed, show_progress=False)


def _chunks(s: Settings) -> dict[str, list[str]]:
    from medllm.storage.store import StoreRef, get_collection

    got = get_collection(StoreRef.from_settings(s), create=False).get(include=["metadatas"])
    out: dict[str, list[str]] = {}
    for cid, meta in zip(got["ids"], got["metadatas"], strict=True):
        out.setdefault(meta["document_id"], []).append(cid)
    return out


def _docstore_text(s: Settings, pmid: str) -> str | None:
    from medllm.storage.store import StoreRef, load_docstore

    d = load_docstore(StoreRef.from_settings(s)).get_document(pmid, raise_error=False)
    return None if d is None else str(d.text)


# ----------------------------------------------------------------------------- reader


def test_reader_reads_the_baseline_fixture() -> None:
    px.check_md5(BASE)  # the NLM-style .md5 beside it matches
    evs = list(px.iter_file(BASE))
    arts = {e.pmid: e.document for e in evs if isinstance(e, px.Article)}
    assert sorted(arts) == ["90000001", "90000002", "90000003", "90000005"]
    assert [e.pmid for e in evs if isinstance(e, px.NoAbstract)] == ["90000004"]

    d = arts["90000001"]
    lines = d.text.split("\n")
    assert lines[0].startswith("Metformin use and lactic acidosis")  # the title first
    assert lines[1].startswith("Background: Metformin is the first-line drug")
    assert lines[-1].startswith("Conclusions: Metformin does not increase")
    assert "©" not in d.text  # CopyrightInformation is not abstract text
    m = d.metadata
    assert (m["pmid"], m["year"], m["journal"]) == ("90000001", 2015, "Diabetes care")
    assert m["meshes"].split("; ")[:2] == ["Acidosis, Lactic", "Diabetes Mellitus, Type 2"]
    assert m["pubtypes"] == "Journal Article; Systematic Review"
    assert m["labels"] == "BACKGROUND, METHODS, RESULTS, CONCLUSIONS"
    assert (m["doi"], m["source"], m["file"]) == ("10.9999/dc15-0001", "pubmed", BASE.name)
    assert set(d.excluded_embed_metadata_keys) == set(m)  # metadata is never embedded
    assert arts["90000003"].metadata["year"] == 2018  # MedlineDate "2018 Dec-2019 Jan"
    assert "Early antimicrobial therapy" in arts["90000005"].text  # <i>Early</i> flattened

    bad = [str(e.error) for e in evs if isinstance(e, px.Rejected)]
    assert len(bad) == 2
    assert BASE.name in bad[0] and "record 5 (PMID 9000x005)" in bad[0] and "not a number" in bad[0]
    assert "PMID 90000006" in bad[1] and "PubDate/Year" in bad[1] and "'20l2'" in bad[1]


def test_reader_update_file_has_deletions() -> None:
    evs = list(px.iter_file(UPD))
    assert [e.pmid for e in evs if isinstance(e, px.Article)] == ["90000002", "90000007"]
    assert [e.pmids for e in evs if isinstance(e, px.Deletion)] == [["90000003", "99999999"]]


def test_truncated_gz_yields_what_it_has_then_names_the_file() -> None:
    got: list[str] = []
    with pytest.raises(DataError) as ei:
        for e in px.iter_file(BROKEN):
            if isinstance(e, px.Article):
                got.append(e.pmid)
    assert got[0] == "90000008" and len(got) >= 2
    msg = str(ei.value)
    assert (
        str(BROKEN) in msg and "truncated or corrupt" in msg and f"after {len(got)} records" in msg
    )


def test_md5_mismatch_and_wrong_root_and_bad_xml(tmp_path: Path) -> None:
    f = tmp_path / BASE.name
    shutil.copy(BASE, f)
    (tmp_path / (BASE.name + ".md5")).write_text(f"MD5({BASE.name})= {'0' * 32}\n")
    with pytest.raises(DataError, match="MD5 mismatch"):
        px.check_md5(f)
    other = tmp_path / "other.xml"
    other.write_text("<Articles><PubmedArticle/></Articles>")
    with pytest.raises(DataError, match="root element is <Articles>"):
        list(px.iter_file(other))
    broken = tmp_path / "broken.xml"
    broken.write_text(UPD.read_text().replace("</ArticleTitle>", "</Title>", 2))
    with pytest.raises(DataError, match=r"broken\.xml.*malformed XML after 0 records"):
        list(px.iter_file(broken))


def test_not_a_pubmed_file_is_told_apart_from_a_damaged_download(tmp_path: Path) -> None:
    """Only a damaged download (empty, cut short, corrupt gzip) is told to download again; a
    file that is no PubMed XML at all is told so."""
    again = "Download the file again"
    txt = tmp_path / "notes.txt"
    txt.write_text("just some notes\n")
    with pytest.raises(DataError, match=r"notes\.txt: not a PubMed XML file: the name does not"):
        px.find_files([txt])
    md5 = BASE.with_name(BASE.name + ".md5")  # `pubmed25n*` names it too: left out
    assert px.find_files([BASE, md5]) == [BASE.resolve()]
    notxml = tmp_path / "notes.xml"
    notxml.write_text("just some notes\n")
    with pytest.raises(DataError) as ei:
        list(px.iter_file(notxml))
    assert "not a PubMed XML file: not XML" in str(ei.value) and again not in str(ei.value)
    src = UPD.read_text()
    damaged = {
        "empty.xml.gz": b"",
        "head.xml": src[: src.index("<PubmedArticleSet>") + 17].encode(),  # cut in the root
        "head.xml.gz": BASE.read_bytes()[:20],  # gzip cut in its first block
    }
    for name, data in damaged.items():
        f = tmp_path / name
        f.write_bytes(data)
        with pytest.raises(DataError) as ei:
            list(px.iter_file(f))
        assert again in str(ei.value) and "not a PubMed" not in str(ei.value), name


def test_files_in_nlm_order_and_baseline_urls(tmp_path: Path) -> None:
    files = px.find_files([FIX / "updates", FIX / "baseline", BASE])
    assert [f.name for f in files] == [BASE.name, UPD.name]  # deduplicated, baseline first
    with pytest.raises(DataError, match="no such file"):
        px.find_files([tmp_path / "missing"])
    urls = px.baseline_urls(1, 2)
    assert urls == [
        "https://ftp.ncbi.nlm.nih.gov/pubmed/baseline/pubmed25n0001.xml.gz",
        "https://ftp.ncbi.nlm.nih.gov/pubmed/baseline/pubmed25n0002.xml.gz",
    ]


# ----------------------------------------------------------------------------- filters


def test_where_syntax() -> None:
    w = filters.parse("year>=2010,pubtype=Review|Meta-Analysis,mesh=Diabetes Mellitus, Type 2")
    assert w is not None
    assert (w.year_min, w.year_max) == (2010, None)
    assert w.terms == (
        ("pubtype", ("review", "meta-analysis")),
        ("mesh", ("diabetes mellitus, type 2",)),
    )
    assert filters.parse(["year=2010..2015", "year<2013"]) == filters.Where(2010, 2012)
    assert filters.parse("YEAR > 2009; Mesh = Aspirin") == filters.Where(
        2010, None, (("mesh", ("aspirin",)),)
    )
    assert filters.parse("  ") is None
    assert filters.chroma_where(filters.parse("mesh=Aspirin")) == {"mesh:aspirin": 1}
    for bad, msg in [
        ("author=Smith", "cannot read"),
        ("year>=twenty", "must be a number"),
        ("year>2020,year<2010", "empty"),
        ("mesh>Aspirin", "takes '='"),
    ]:
        with pytest.raises(DataError, match=msg):
            filters.parse(bad)
    meta = {"year": 2015, "meshes": "Metformin; Diabetes Mellitus, Type 2", "pubtypes": "Review"}
    assert filters.passes(
        filters.parse("mesh=metformin,pubtype=review,year=2015") or filters.Where(), meta
    )
    assert not filters.passes(filters.parse("mesh=Diabetes Mellitus") or filters.Where(), meta)
    assert not filters.passes(filters.Where(2000, None), {"meshes": "x"})  # no year: fails


# ----------------------------------------------------------------------------- ingestion


def test_ingest_updates_deletions_idempotence_and_resume(embed: Any) -> None:
    s = _settings()
    first = _ingest([BASE], embed)
    assert (first.files, first.new, first.rejected, first.no_abstract) == (1, 4, 2, 1)
    assert "PMID 9000x005" in first.errors[0] and BASE.name in first.errors[0]
    chunks_before = _chunks(s)
    assert sorted(chunks_before) == ["90000001", "90000002", "90000003", "90000005"]

    # The baseline again plus the update file: the baseline is skipped as done; 90000002 is
    # replaced (not duplicated), 90000007 added, 90000003 deleted everywhere.
    second = _ingest([FIX / "baseline", FIX / "updates"], embed)
    assert (second.files, second.files_skipped) == (1, 1)
    assert (second.new, second.updated, second.deleted) == (1, 1, 1)
    ch = _chunks(s)
    assert sorted(ch) == ["90000001", "90000002", "90000005", "90000007"]
    assert all(len(v) == 1 for v in ch.values())
    assert "revised abstract" in (_docstore_text(s, "90000002") or "")
    assert _docstore_text(s, "90000003") is None

    from medllm.retrieval import Retriever

    r = Retriever.from_settings(s, embed_model=embed)
    for mode in ("bm25", "hybrid", "dense"):
        ids = [d.doc_id for d in r.search("aspirin primary prevention bleeding", k=5, mode=mode)]
        assert "90000003" not in ids  # deleted from Chroma and BM25

    # A re-run changes nothing and embeds nothing.
    third = _ingest([FIX / "baseline", FIX / "updates"], embed)
    assert (third.files, third.files_skipped, third.chunks, third.new) == (0, 2, 0, 0)
    assert _chunks(s) == ch

    # A truncated file: the error names it, what it held before the break is stored, nothing
    # stored earlier is lost, and it is not marked done (a re-run tries it again).
    fourth = _ingest([FIX / "broken"], embed)
    assert len(fourth.files_failed) == 1 and str(BROKEN) in fourth.files_failed[0]
    assert "truncated" in fourth.files_failed[0]
    after = _chunks(s)
    assert "90000008" in after and set(ch) <= set(after)
    again = _ingest([FIX / "broken"], embed)
    assert again.files_skipped == 0 and len(again.files_failed) == 1
    assert again.chunks == 0 and again.unchanged == fourth.new  # nothing re-embedded
    state = json.loads((r.ref.dir / "pubmed_files.json").read_text())
    assert sorted(state["files"]) == [BASE.name, UPD.name]


def test_a_run_where_every_file_fails_creates_no_store(embed: Any, tmp_path: Path) -> None:
    from medllm.storage.store import StoreRef, list_stores

    bad = tmp_path / BASE.name
    shutil.copy(BASE, bad)
    (tmp_path / (BASE.name + ".md5")).write_text(f"MD5({BASE.name})= {'0' * 32}\n")
    other = tmp_path / "other.xml"
    other.write_text("<Articles><PubmedArticle/></Articles>")
    with pytest.raises(DataError) as ei:
        _ingest([bad, other], embed)
    msg = str(ei.value)
    assert msg.startswith("nothing to ingest: 2 files could not be read; nothing was stored")
    assert "MD5 mismatch" in msg and "root element is <Articles>" in msg
    assert list_stores(_settings()) == [] and not StoreRef.from_settings(_settings()).dir.exists()
    # A store that exists stays as it is: the failed file is reported, nothing raised.
    _ingest([BASE], embed)
    summ = _ingest([other], embed)
    assert len(summ.files_failed) == 1 and summ.documents_total == 4


def test_revision_with_new_mesh_terms_only_is_not_re_embedded(embed: Any, tmp_path: Path) -> None:
    """A later file's version of a citation whose text is unchanged (only MeSH differ, as in
    many update-file revisions) keeps its vectors; its MeSH filter flags and BM25 follow."""
    from medllm.retrieval import Retriever

    s = _settings()
    _ingest([BASE], embed)
    src = (FIX / "src" / "pubmed25n0001.xml").read_text()
    start = src.index("<PubmedArticle>")
    end = src.index("</PubmedArticle>", src.index(">90000001</PMID>")) + len("</PubmedArticle>")
    article = src[start:end]
    assert article.count("<PubmedArticle>") == 1 and ">Humans<" in article
    revised = article.replace(">Humans<", ">Zebrafish<")
    upd = tmp_path / "pubmed25n0004.xml"
    upd.write_text(src[:start] + revised + "\n</PubmedArticleSet>\n")
    summ = _ingest([upd], embed)
    assert (summ.updated, summ.restamped, summ.chunks) == (1, 1, 0)
    r = Retriever.from_settings(s, embed_model=embed)
    q = "metformin lactic acidosis chronic kidney disease"
    for mode in ("dense", "bm25", "hybrid"):
        hit = [d.doc_id for d in r.search(q, k=3, mode=mode, where="mesh=Zebrafish")]
        assert hit == ["90000001"], mode
        gone = [d.doc_id for d in r.search(q, k=5, mode=mode, where="mesh=Humans")]
        assert "90000001" not in gone, mode
    assert r.search("zebrafish", k=1, mode="bm25")[0].doc_id == "90000001"  # MeSH in BM25


def test_older_file_after_newer_never_restores_old_versions(embed: Any) -> None:
    s = _settings()
    _ingest([UPD], embed)  # the update file first...
    late = _ingest([BASE], embed)  # ...then the older baseline
    assert late.superseded == 2  # 90000002 (revised later) and 90000003 (deleted later)
    assert "revised abstract" in (_docstore_text(s, "90000002") or "")
    assert _docstore_text(s, "90000003") is None


def test_where_filters_every_mode(embed: Any) -> None:
    from medllm.retrieval import Retriever

    s = _settings()
    _ingest([BASE, UPD], embed)
    r = Retriever.from_settings(s, embed_model=embed)
    q = "drug therapy risk in patients"
    cases = {
        "mesh=Metformin": {"90000001"},
        "pubtype=Review": {"90000007"},
        "pubtype=Randomized Controlled Trial|Systematic Review": {"90000001", "90000002"},
        "year<=2010": {"90000002", "90000007"},
        "year=2011..2015,pubtype=Journal Article": {"90000001", "90000005"},
        "mesh=Diabetes Mellitus, Type 2,year>=2016": set(),
    }
    for where, want in cases.items():
        for mode in ("dense", "bm25", "hybrid"):
            got = {d.doc_id for d in r.search(q, k=10, mode=mode, where=where)}
            if mode == "bm25":  # BM25 returns only documents sharing a query term
                assert got <= want, (where, mode, got)
            else:
                assert got == want, (where, mode, got)
    # The setting applies to every search; year_range narrows it.
    rs = Retriever.from_settings(
        s.with_overrides(retrieval={"where": "pubtype=Journal Article"}), embed_model=embed
    )
    got = {d.doc_id for d in rs.search(q, k=10, mode="hybrid", year_range=(2012, 2020))}
    assert got == {"90000001", "90000005"}
    # BM25 is opened without reading its postings (a query reads its terms' lists from the
    # files), ids and filter columns from side files.
    import numpy as np

    bm = r._bm25_index()
    assert all(isinstance(seg.indptr, np.memmap) and seg.docs_file.size for seg in bm.segments)
    assert sorted(r._bm25_ids()) == ["90000001", "90000002", "90000005", "90000007"]
    hit = r.search(q, k=1, mode="dense", where="mesh=Metformin")[0]
    assert not any(k.startswith("mesh:") for k in hit.metadata)  # flags stay internal
    assert "Metformin" in hit.metadata["meshes"]


def test_mesh_filter_on_a_store_without_flags_is_a_clear_error(embed: Any) -> None:
    from medllm.retrieval import Retriever
    from medllm.storage.store import MANIFEST, StoreRef

    s = _settings()
    _ingest([BASE], embed)
    ref = StoreRef.from_settings(s)
    m = json.loads((ref.dir / MANIFEST).read_text())
    m.pop("filters")  # as written by a medllm before filters
    (ref.dir / MANIFEST).write_text(json.dumps(m))
    r = Retriever.from_settings(s, embed_model=embed)
    with pytest.raises(StoreError, match="store drop"):
        r.search("metformin", mode="dense", where="mesh=Metformin")
    assert r.search("metformin", mode="dense", where="year>=2015")  # years need no flags


def test_cli_ingest_pubmed_then_retrieve_stats_and_ask() -> None:
    """`medllm ingest pubmed FIXTURES`, then `retrieve --where`, `store stats` and `ask`."""
    from medllm.cli.main import app

    runner = CliRunner()
    res = runner.invoke(
        app, ["ingest", "pubmed", str(FIX / "baseline"), str(UPD), "--collection", "pm", "--json"]
    )
    assert res.exit_code == 0, res.output
    summ = json.loads(res.stdout)
    assert (summ["files"], summ["documents_total"], summ["deleted"]) == (2, 4, 1)
    res = runner.invoke(
        app,
        [
            "retrieve",
            "lactic acidosis with metformin in kidney disease",
            "--collection",
            "pm",
            "-k",
            "2",
            "--where",
            "year>=2010",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    docs = json.loads(res.stdout)
    assert docs[0]["doc_id"] == "90000001" and docs[0]["metadata"]["year"] == 2015
    res = runner.invoke(app, ["store", "stats", "--json"])
    (row,) = json.loads(res.stdout)["stores"]
    assert row["disk_bytes"]["bm25"] > 0 and row["disk_bytes"]["docstore"] > 0
    assert row["memory_bytes_estimate"]["hnsw"] == 4 * (4 * 384 + 150)
    res = runner.invoke(app, ["store", "stats"])
    assert "disk: BM25" in res.stdout and "memory to query" in res.stdout
    res = runner.invoke(app, ["retrieve", "x", "--collection", "pm", "--where", "author=Smith"])
    assert res.exit_code != 0 and "cannot read the filter clause" in res.output
    # The acceptance path: `medllm ask` (SmolLM2) answers from those abstracts.
    q = "Does metformin increase the risk of lactic acidosis in moderate chronic kidney disease?"
    res = runner.invoke(app, ["ask", q, "--collection", "pm", "--json"])
    assert res.exit_code == 0, res.output
    a = json.loads(res.stdout)
    assert a["route"] == "rag" and not a["abstained"]
    assert [c["pmid"] for c in a["citations"]][0] == "90000001"
    assert a["label"] is None and a["label_probs"]  # SmolLM2: no skill, no label
    # Filtered to years none of the stored abstracts has: nothing to answer from.
    res = runner.invoke(
        app, ["ask", q, "--collection", "pm", "--mode", "rag", "--where", "year>=2020", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["abstained"] is True
    # Several --where flags all hold (`ask` used to keep the last one: mesh=Metformin alone
    # passes 90000001, and the question was answered from a 2015 abstract).
    args = ["ask", q, "--collection", "pm", "--mode", "rag", "--json"]
    res = runner.invoke(app, [*args, "--where", "year>=2020", "--where", "mesh=Metformin"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["abstained"] is True
    res = runner.invoke(app, ["ingest", "pubmed", str(BROKEN), "--collection", "pm"])
    assert res.exit_code == 1 and "truncated" in res.stderr and "Traceback" not in res.output
    # Each rejected record and failed file is printed once; progress bars written to no
    # terminal move no cursor (a nested bar left ESC[A behind).
    res = runner.invoke(app, ["ingest", "pubmed", str(BASE), str(BROKEN), "--collection", "p2"])
    assert res.exit_code == 1, res.output
    err = res.stderr.replace("\n", "")
    assert err.count("PMID '9000x005' is not a number") == 1, res.stderr
    assert err.count("year '20l2'") == 1 and err.count("truncated or corrupt") == 1
    assert "\x1b[" not in res.output


def _article(pmid: str, text: str, version: int = 1) -> str:
    return (
        f'<PubmedArticle><MedlineCitation Status="MEDLINE" Owner="NLM">'
        f'<PMID Version="{version}">{pmid}</PMID><Article PubModel="Print"><Journal>'
        f"<JournalIssue><PubDate><Year>2012</Year></PubDate></JournalIssue>"
        f"<Title>J Test</Title></Journal><ArticleTitle>Study {pmid}.</ArticleTitle>"
        f"<Abstract><AbstractText>{text}</AbstractText></Abstract></Article>"
        f"</MedlineCitation></PubmedArticle>\n"
    )


def test_batches_are_staged_and_split_ahead_with_the_files_order_kept(
    embed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With batches of two, each full batch is written while the next is split on the
    splitter thread; a record or a deletion of a PMID in the batch waiting to be written
    (staged) is applied after it — the store ends as with one big batch."""
    from medllm.pipelines.ingest import StoreWriter
    from medllm.pipelines.pubmed_ingest import ingest_pubmed

    def finding(i: int, extra: str = "") -> str:
        return f"Trial {i} found that statins lowered LDL cholesterol by {10 + i}%.{extra}"

    body = [
        *(_article(f"9100000{i}", finding(i)) for i in range(1, 5)),
        _article("91000002", finding(2, " Revised."), 2),  # its first version was written
        "<DeleteCitation><PMID>91000003</PMID></DeleteCitation>\n",  # staged at this point
        *(_article(f"9100000{i}", finding(i)) for i in range(5, 8)),
        _article("91000007", finding(7, " Revised."), 2),  # still pending / staged
        _article("91000008", finding(8)),
    ]
    f = tmp_path / "in" / "pubmed25n0101.xml"
    f.parent.mkdir()
    f.write_text(
        '<?xml version="1.0"?>\n<PubmedArticleSet>\n' + "".join(body) + "</PubmedArticleSet>\n"
    )
    ahead: list[list[str]] = []
    real = StoreWriter._split_ahead

    def spy(self: Any, batch: Any) -> None:
        ahead.append([d.id_ for d in batch])
        real(self, batch)

    monkeypatch.setattr(StoreWriter, "_split_ahead", spy)
    stores = {}
    for bs in (2, 256):
        s = Settings.load(config_file=False, retrieval={"collection": f"pm{bs}"})
        got = ingest_pubmed(s, [f.parent], embed_model=embed, batch_size=bs, show_progress=False)
        # removed from the store (batches of 2) or from the pending batch before it was stored
        assert got.files == 1 and got.deleted == (1 if bs == 2 else 0), got
        stores[bs] = s
    assert ahead and all(len(b) <= 2 for b in ahead)  # only the small batches split ahead
    small, big = (_chunks(stores[b]) for b in (2, 256))
    assert sorted(small) == sorted(big) == [f"9100000{i}" for i in (1, 2, 4, 5, 6, 7, 8)]
    assert {d: len(c) for d, c in small.items()} == {d: len(c) for d, c in big.items()}
    for pmid in ("91000002", "91000007"):
        assert "Revised." in (_docstore_text(stores[2], pmid) or ""), pmid
    assert _docstore_text(stores[2], "91000003") is None
