"""`medllm ingest files` input handling: PDFs read as text (not raw PDF source), invalid UTF-8
in .txt/.md refused, a wrong --id-field/--text-field refused before any store is created, and
each rejected record reported once. Real files in tmp_path; the CLI through typer's runner."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medllm.cli.main import app
from medllm.errors import DataError
from medllm.pipelines.readers import dedupe, read_csv, read_dir, read_jsonl

TEXT = "Aspirin reduces stroke risk."


def _text_pdf(text: str = TEXT) -> bytes:
    """A one-page PDF written by hand: Helvetica, one line of text."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def _pdf(*pages: str | None) -> bytes:
    """A PDF whose pages have the given text (None: a blank page, as a scan has)."""
    import pypdf

    w = pypdf.PdfWriter()
    for text in pages:
        if text is None:
            w.add_blank_page(612, 792)
        else:
            w.add_page(pypdf.PdfReader(io.BytesIO(_text_pdf(text))).pages[0])
    buf = io.BytesIO()
    w.write(buf)
    return buf.getvalue()


# ----------------------------------------------------------------------------- PDF


def test_handmade_pdf_has_extractable_text() -> None:
    import pypdf

    assert pypdf.PdfReader(io.BytesIO(_text_pdf())).pages[0].extract_text() == TEXT


def test_pdf_pages_are_read_as_text_with_page_ids_and_labels(tmp_path: Path) -> None:
    f = tmp_path / "paper.pdf"
    f.write_bytes(_pdf("Aspirin reduces stroke risk.", None, "Statins lower LDL."))
    res = read_dir(tmp_path)
    assert not res.rejected
    got = [(d.id_, d.text, d.metadata["page_label"]) for d in res.documents]
    assert got == [  # the blank page is skipped; ids keep the page index
        (f"{f}_part_0", "Aspirin reduces stroke risk.", "1"),
        (f"{f}_part_2", "Statins lower LDL.", "3"),
    ]
    assert all("%PDF" not in d.text for d in res.documents)
    assert res.documents[0].metadata["file_name"] == "paper.pdf"
    assert [d.id_ for d in read_dir(tmp_path).documents] == [d.id_ for d in res.documents]


def test_scanned_or_broken_pdf_is_rejected_by_name(tmp_path: Path) -> None:
    (tmp_path / "scan.pdf").write_bytes(_pdf(None, None))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really a pdf")
    (tmp_path / "ok.txt").write_text("Kept.")
    res = read_dir(tmp_path)
    assert [d.text for d in res.documents] == ["Kept."]
    msgs = sorted(str(e) for e in res.rejected)
    assert len(msgs) == 2
    assert "broken.pdf" in msgs[0] and "cannot read PDF" in msgs[0]
    assert "scan.pdf" in msgs[1] and "no extractable text" in msgs[1]


def test_without_pypdf_a_pdf_is_rejected_never_stored_raw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "paper.pdf").write_bytes(_text_pdf())
    (tmp_path / "note.txt").write_text("Kept.")
    monkeypatch.setitem(sys.modules, "pypdf", None)  # `import pypdf` raises ImportError
    res = read_dir(tmp_path)
    assert [d.text for d in res.documents] == ["Kept."]
    [e] = res.rejected
    assert "paper.pdf" in str(e) and "pip install pypdf" in str(e)


# ----------------------------------------------------------------------------- UTF-8


def test_invalid_utf8_text_file_is_rejected_with_its_byte_offset(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_bytes(b"bad utf8 \xff\xfe( text here\n")
    (tmp_path / "bad.md").write_bytes("# Café\n".encode() + b"\xc3(\n")
    (tmp_path / "good.txt").write_text("Good text, naïve café.", encoding="utf-8")
    res = read_dir(tmp_path)
    good = tmp_path / "good.txt"
    assert [(d.id_, d.text) for d in res.documents] == [(str(good), "Good text, naïve café.")]
    assert res.documents[0].metadata == {"file_path": str(good), "file_name": "good.txt"}
    msgs = sorted(str(e) for e in res.rejected)
    assert len(msgs) == 2
    assert "bad.md" in msgs[0] and "not valid UTF-8 at byte 8" in msgs[0]
    assert "bad.txt" in msgs[1] and "not valid UTF-8 at byte 9" in msgs[1]


# ----------------------------------------------------------------------------- wrong field


def test_a_field_no_record_has_refuses_the_file(tmp_path: Path) -> None:
    from medllm.errors import DataError

    rows = [{"pmid": "1", "title": "T", "abstract": "A."}, {"pmid": "2", "abstract": "B."}]
    p = tmp_path / "small.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as ei:
        read_jsonl(p, id_field="pmd", text_field="abstract")
    msg = str(ei.value)
    assert msg.startswith(f"{p}: no record has the field 'pmd' (--id-field)")
    assert "fields found: pmid, title, abstract" in msg
    with pytest.raises(DataError, match=r"no record has the field 'text' \(--text-field\)"):
        read_jsonl(p, id_field="pmid")
    # a field some records lack is a per-record rejection, not a refused file
    res = read_jsonl(p, id_field="pmid", text_field="abstract")
    assert len(res.documents) == 2
    res = read_jsonl(p, id_field="title", text_field="abstract")
    assert len(res.documents) == 1 and "line 2" in str(res.rejected[0])

    c = tmp_path / "small.csv"
    c.write_text("pmid,title,abstract\n1,T,A.\n")
    with pytest.raises(DataError, match=r"no column 'pmd' \(--id-field\); columns found: pmid"):
        read_csv(c, id_field="pmd", text_field="abstract")


@pytest.mark.parametrize(
    ("name", "body", "args", "expected"),
    [
        (
            "small.jsonl",
            '{"pmid": "1", "title": "T1", "abstract": "A."}\n{"pmid": "2", "abstract": "B."}\n',
            ["--id-field", "pmd", "--text-field", "abstract"],
            "no record has the field 'pmd' (--id-field); fields found: pmid, title, abstract",
        ),
        (
            "small.jsonl",
            '{"pmid": "1", "title": "T1", "abstract": "A."}\n',
            ["--id-field", "pmid"],
            "no record has the field 'text' (--text-field)",
        ),
        (
            "small.csv",
            "pmid,title,abstract\n1,T1,A.\n",
            ["--id-field", "pmd", "--text-field", "abstract"],
            "no column 'pmd' (--id-field); columns found: pmid, title, abstract",
        ),
    ],
)
def test_cli_wrong_field_exits_nonzero_and_creates_no_store(
    tmp_path: Path, name: str, body: str, args: list[str], expected: str
) -> None:
    runner = CliRunner()
    p = tmp_path / name
    p.write_text(body)
    res = runner.invoke(app, ["ingest", "files", str(p), *args, "--collection", "t1"])
    assert res.exit_code == 1, res.output
    assert expected in res.stderr.replace("\n", "")
    assert "rejected:" not in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["store", "stats", "--json"])
    assert json.loads(res.stdout)["stores"] == []


def test_cli_every_record_rejected_exits_nonzero_and_creates_no_store(tmp_path: Path) -> None:
    """Fields right, but every record bad (here: empty texts): the run did nothing, so it says
    so and fails — it used to exit 0 and leave an empty store behind."""
    runner = CliRunner()
    p = tmp_path / "empty_texts.jsonl"
    p.write_text('{"id": "1", "text": ""}\n{"id": "2", "text": "   "}\n')
    res = runner.invoke(app, ["ingest", "files", str(p), "--collection", "t2"])
    assert res.exit_code == 1, res.output
    msg = " ".join(res.stderr.split())
    assert "nothing to ingest: all 2 records were rejected" in msg and "empty_texts.jsonl" in msg
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["store", "stats", "--json"])
    assert json.loads(res.stdout)["stores"] == []


# ----------------------------------------------------------------------------- messages


def test_malformed_jsonl_line_gives_jsons_whole_message_and_the_file_line(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text('{"id": "1", "text": "ok"}\n\n{"id": "2", "text": "unterminated}\n')
    [e] = read_jsonl(p).rejected
    assert str(e) == (
        f"{p}, record line 3: malformed JSON: Unterminated string starting at: "
        "line 3 column 21 (char 20 of the line)"
    )


def test_duplicate_id_names_the_users_text_field_and_both_records(tmp_path: Path) -> None:
    rows = [("3001", "A."), ("3002", "B."), ("3001", "C.")]
    p = tmp_path / "notes.jsonl"
    p.write_text("".join(json.dumps({"pmid": i, "abstract": t}) + "\n" for i, t in rows))
    res = read_jsonl(p, id_field="pmid", text_field="abstract")
    [e] = dedupe(res.documents, res.where, text_field=res.text_field).rejected
    assert str(e) == (
        f"{p}, record line 3 (id '3001'), field 'abstract': the same id appears twice with "
        f"different content (first: {p}, line 1 (id '3001')); kept the first"
    )


def test_jsonl_record_with_an_unescaped_line_separator_is_one_record(tmp_path: Path) -> None:
    """U+2028, U+2029 and U+0085 may stand unescaped in a JSON string (json.dumps with
    ensure_ascii=False writes them so); splitting the file with str.splitlines cut such a
    record in two and rejected it as malformed JSON, with later line numbers off."""
    p = tmp_path / "seps.jsonl"
    recs = [{"id": "1", "text": "One.\u2028Two."}, {"id": "2", "text": "NEL\u0085x"}, {"id": "3"}]
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in recs), "utf-8")
    res = read_jsonl(p)
    got = [(d.id_, d.text) for d in res.documents]
    assert got == [("1", "One.\u2028Two."), ("2", "NEL\u0085x")]
    [e] = res.rejected
    assert "line 3 (id '3')" in str(e) and "'text'" in str(e)


def test_a_byte_order_mark_is_not_part_of_the_first_record_or_column(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" and some editors start a file with a BOM: it used to reject a
    JSONL file's first record and refuse a CSV file ("no column 'id'; columns found: \ufeffid")."""
    j = tmp_path / "bom.jsonl"
    j.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "1", "text": "A."}).encode() + b"\n")
    c = tmp_path / "bom.csv"
    c.write_bytes(b"\xef\xbb\xbfid,text\r\n2,B.\r\n")
    for res, want in ((read_jsonl(j), "1"), (read_csv(c), "2")):
        assert [d.id_ for d in res.documents] == [want] and res.rejected == []


def test_an_id_that_is_a_list_object_or_boolean_is_rejected(tmp_path: Path) -> None:
    """Such ids were stored as Python's repr ("['x']", "{'a': 1}", "True")."""
    p = tmp_path / "ids.jsonl"
    ids = [["x"], {"a": 1}, True, 7, 7.5, "s"]
    p.write_text("".join(json.dumps({"id": i, "text": f"T{n}."}) + "\n" for n, i in enumerate(ids)))
    res = read_jsonl(p)
    assert [d.id_ for d in res.documents] == ["7", "7.5", "s"]
    msgs = [str(e) for e in res.rejected]
    assert len(msgs) == 3 and all("field 'id': must be a string or a number" in m for m in msgs)
    assert 'not ["x"]' in msgs[0] and "line 3" in msgs[2] and msgs[2].endswith("not true")


def test_malformed_csv_rows_are_rejected_by_row_not_merged_or_crashing(tmp_path: Path) -> None:
    """A row with more values than columns crashed the run (a pydantic traceback: csv put the
    extras under the key None); a stray quote ran text together and an unclosed quote
    swallowed every later row into one record's text, silently."""
    p = tmp_path / "x.csv"
    p.write_text(
        "id,text,year\n"
        "1,fine,2001\n"
        "2,an unquoted, comma,2002\n"
        '3,"stray"quote,2003\n'
        "4,also fine,2004\n"
        '5,"never closed,2005\n'
        "6,swallowed,2006\n"
    )
    res = read_csv(p)
    assert [(d.id_, d.text) for d in res.documents] == [("1", "fine"), ("4", "also fine")]
    msgs = [str(e) for e in res.rejected]
    assert len(msgs) == 3
    assert "row 3 (id '2')" in msgs[0] and "4 values for 3 columns" in msgs[0]
    assert "row 4: malformed CSV" in msgs[1] and "line 4" in msgs[1]
    assert "row 6: malformed CSV" in msgs[2] and "an unclosed quote" in msgs[2]
    big = tmp_path / "big.csv"  # over csv's default field limit, under max_chars: stored
    big.write_text("id,text\nbig," + "word " * 40_000 + "\n")
    assert [len(d.text) for d in read_csv(big).documents] == [200_000]
    d = tmp_path / "dup.csv"
    d.write_text("id,text,text\n1,first,second\n")
    with pytest.raises(DataError, match="the column 'text' 2 times"):
        read_csv(d)


def test_an_empty_csv_has_no_records_like_an_empty_jsonl(tmp_path: Path) -> None:
    for name in ("empty.csv", "empty.jsonl"):
        (tmp_path / name).write_text("\n")
    for res in (read_csv(tmp_path / "empty.csv"), read_jsonl(tmp_path / "empty.jsonl")):
        assert (res.documents, res.rejected) == ([], [])


def test_cli_empty_input_file_is_named_and_alone_stores_nothing(tmp_path: Path) -> None:
    """An input without records used to read as "0 new … 0 rejected", exit 0: now it is named
    (a warning beside other files; alone, an error and no store)."""
    runner = CliRunner()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    args = ["--id-field", "pmid", "--text-field", "abstract", "--collection", "notes"]
    res = runner.invoke(app, ["ingest", "files", str(empty), *args])
    assert res.exit_code == 1, res.output
    msg = " ".join(res.stderr.split())
    assert f"{empty}: nothing to ingest: no records in this file" in msg
    assert json.loads(runner.invoke(app, ["store", "stats", "--json"]).stdout)["stores"] == []

    notes = tmp_path / "notes.jsonl"
    notes.write_text(
        '{"pmid": "3001", "abstract": "Aspirin lowers stroke risk."}\n'
        '{"pmid": "3001", "abstract": "Something else."}\n'
        '{"pmid": "3003", "abstract": "unterminated}\n'
    )
    res = runner.invoke(app, ["ingest", "files", str(empty), str(notes), *args])
    assert res.exit_code == 0, res.output
    err = " ".join(res.stderr.split())
    assert f"warning: {empty}: no records in this file" in err
    assert f"{notes}, record line 2 (id '3001'), field 'abstract': the same id" in err
    assert f"(first: {notes}, line 1 (id '3001'))" in err
    assert "Unterminated string starting at: line 3 column" in err
    out = " ".join(res.stdout.split())
    assert "1 new, 0 updated, 0 unchanged, 2 rejected" in out
    assert "1 chunk embedded; store holds 1 document in 1 chunk " in out
    assert "BM25: 1 document indexed" in out


# ----------------------------------------------------------------------------- CLI end to end


def test_cli_dir_read_by_a_relative_or_absolute_path_is_the_same_documents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder's documents are keyed by file path: `papers` read from its parent and then as
    /…/papers (or ./papers/) used to store every file twice."""
    d = tmp_path / "papers"
    d.mkdir()
    (d / "a.txt").write_text(TEXT)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for arg in ("papers", str(d), "./papers/"):
        res = runner.invoke(app, ["ingest", "files", arg, "--collection", "p", "--json"])
        assert res.exit_code == 0, res.output
        summ = json.loads(res.stdout)
        assert (summ["new"] + summ["unchanged"], summ["documents_total"]) == (1, 1), summ
    res = runner.invoke(app, ["retrieve", "aspirin", "--collection", "p", "--json"])
    assert [h["doc_id"] for h in json.loads(res.stdout)] == [str(d / "a.txt")]


def test_cli_one_pdf_or_text_file_is_read_as_in_its_folder(tmp_path: Path) -> None:
    """A single .pdf/.txt used to be refused both ways: "cannot tell the format from the
    name; pass --format jsonl|csv|dir", then "--format dir needs a directory"."""
    d = tmp_path / "papers"
    d.mkdir()
    (d / "a.pdf").write_bytes(_text_pdf())
    (d / "n.txt").write_text("Statins lower LDL cholesterol.")
    (d / "x.rtf").write_text("{\\rtf1 x}")
    runner = CliRunner()
    for args in ([str(d / "a.pdf")], [str(d / "n.txt"), "--format", "dir"], [str(d)]):
        res = runner.invoke(app, ["ingest", "files", *args, "--collection", "p", "--json"])
        assert res.exit_code == 0, res.output
    summ = json.loads(res.stdout)
    assert (summ["new"], summ["unchanged"], summ["documents_total"]) == (0, 2, 2)
    res = runner.invoke(app, ["ingest", "files", str(d / "x.rtf"), "--collection", "p"])
    assert res.exit_code == 1 and "cannot tell the format" in res.stderr
    res = runner.invoke(app, ["ingest", "files", str(d / "x.rtf"), "--format", "dir"])
    assert res.exit_code == 1 and "not a .txt/.md/.pdf file or a directory" in res.stderr


def test_cli_dir_reads_pdf_text_and_reports_each_rejection_once(tmp_path: Path) -> None:
    d = tmp_path / "papers"
    d.mkdir()
    (d / "a.pdf").write_bytes(_text_pdf())
    (d / "scan.pdf").write_bytes(_pdf(None))
    (d / "bad.txt").write_bytes(b"bad utf8 \xff\xfe( text here\n")
    (d / "empty.md").write_text(" \n")
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", "files", str(d), "--format", "dir", "--collection", "p"])
    assert res.exit_code == 0, res.output
    assert "llama-index-readers-file" not in res.output
    err = res.stderr.replace("\n", "")
    for what in ("scan.pdf", "bad.txt", "empty.md"):
        assert err.count(what) == 1, res.stderr  # once: not also as a logged warning
    assert "no extractable text" in err and "not valid UTF-8 at byte 9" in err
    assert "1 new" in res.stdout and "3 rejected" in res.stdout

    res = runner.invoke(
        app, ["retrieve", "aspirin stroke", "--collection", "p", "--mode", "bm25", "--json"]
    )
    assert res.exit_code == 0, res.output
    [hit] = json.loads(res.stdout)
    assert hit["doc_id"] == f"{d / 'a.pdf'}_part_0" and hit["text"] == TEXT
    assert hit["metadata"]["page_label"] == "1"
