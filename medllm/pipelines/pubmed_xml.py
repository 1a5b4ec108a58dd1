"""MEDLINE/PubMed XML (the annual baseline and the daily update files) → Documents.

NLM distributes PubMed as ``pubmed<YY>n<NNNN>.xml.gz`` files (``PubmedArticleSet``, DTD
``pubmed_<YYMMDD>.dtd``): the annual baseline under :data:`BASELINE_URL` (about 1,300 files of
~30,000 citations) and daily update files under :data:`UPDATES_URL`, numbered on after the
baseline. An update file holds new and revised citations (``PubmedArticle``) and, at its end,
the PMIDs to remove (``DeleteCitation``). Files must be applied in number order; each ships
with an ``.md5`` file, which :func:`iter_file` checks when it lies beside the file.

:func:`iter_file` streams one file (gzip or plain) with ``xml.etree.ElementTree.iterparse``,
clearing each record once read, so memory stays constant whatever the file size. It yields

* :class:`Article` — one Document per citation with an abstract: ``id_`` = PMID, text = the
  title, then the abstract's sections each prefixed by its label (``Background: ...``, as for
  PubMedQA); metadata ``pmid``, ``title``, ``year``, ``journal``, ``meshes`` (MeSH descriptor
  names, ``; ``-joined — the key PubMedQA uses, so MeSH terms feed BM25 the same way),
  ``pubtypes`` (publication types, ``; ``-joined), ``labels``, ``doi``, ``pmid_version``,
  ``source`` = ``pubmed``, ``file`` (the file it came from);
* :class:`NoAbstract` — a citation without an abstract (title-only records, about a third of
  PubMed): not indexed, and a stored older version of it is removed;
* :class:`Deletion` — the PMIDs of a ``DeleteCitation`` element;
* :class:`Rejected` — a record that cannot be read (no PMID, non-numeric PMID, no ``Article``,
  an implausible year...), as a :class:`DataError` naming the file, the record number and PMID,
  and the field.

A file that breaks off (a truncated ``.gz``, XML that stops being well-formed) raises a
:class:`DataError` naming the file and how far it got, after yielding every record before the
break, and says to download it again; so does an empty file. A file that is not PubMed XML at
all (not XML, another root element) raises one that says so instead. Nothing is fetched while
parsing (the DOCTYPE's DTD URL is never resolved).
"""

from __future__ import annotations

import gzip
import hashlib
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast
from xml.etree import ElementTree as ET

from medllm.errors import DataError
from medllm.pipelines.readers import MAX_DOC_CHARS, make_document, plural

if TYPE_CHECKING:
    from llama_index.core import Document

BASELINE_URL = "https://ftp.ncbi.nlm.nih.gov/pubmed/baseline/"
UPDATES_URL = "https://ftp.ncbi.nlm.nih.gov/pubmed/updatefiles/"
SUFFIXES = (".xml", ".xml.gz")
_NAME = re.compile(r"pubmed(\d{2})n(\d{4})\.xml(\.gz)?$")
_YEAR = re.compile(r"(1[6-9]\d\d|20\d\d)")


def baseline_urls(first: int = 1, last: int = 1274, *, year: int = 25) -> list[str]:
    """URLs of baseline files ``first..last`` of the ``year`` (two digits) release.

    The 2025 baseline is ``pubmed25n0001.xml.gz`` .. ``pubmed25n1274.xml.gz``; check the
    listing at :data:`BASELINE_URL` for the current release and its last number. Each file has
    an ``.md5`` beside it (append ``.md5`` to the URL)."""
    return [f"{BASELINE_URL}pubmed{year:02d}n{n:04d}.xml.gz" for n in range(first, last + 1)]


def file_order(path: Path) -> tuple[int, int] | None:
    """(release year, file number) for NLM's file names, None for other names.

    Baseline and update files share one numbering, so this orders every file of a release and
    the next release after it. A citation is only replaced by one from a file that does not
    order before the file it came from."""
    m = _NAME.search(path.name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def find_files(paths: list[Path]) -> list[Path]:
    """The XML files named or inside the directories named, in NLM order (then by name).

    A named file whose name does not end in ``.xml`` or ``.xml.gz`` is refused (nothing is
    read), except an ``.md5`` file lying beside its data file (as ``pubmed25n*`` names them
    both), which is left out: the data file is checked against it when it is read."""
    files: list[Path] = []
    for p in paths:
        p = p.expanduser()
        if p.is_dir():
            found = [f for f in p.rglob("*") if f.is_file() and f.name.endswith(SUFFIXES)]
            if not found:
                raise DataError("no .xml or .xml.gz files in this directory", path=p)
            files += found
        elif p.is_file():
            if p.name.endswith(SUFFIXES):
                files.append(p)
            elif not (p.name.endswith(".md5") and p.with_name(p.name[:-4]).is_file()):
                raise DataError(
                    "not a PubMed XML file: the name does not end in .xml or .xml.gz (NLM's "
                    "files are pubmed<YY>n<NNNN>.xml.gz); nothing was read",
                    path=p,
                )
        else:
            raise DataError("no such file or directory", path=p)
    if not files:
        raise DataError("no .xml or .xml.gz file among the paths given; nothing was read")
    uniq = list(dict.fromkeys(f.resolve() for f in files))
    return sorted(uniq, key=lambda f: (file_order(f) or (99, 9999), f.name, str(f)))


@dataclass
class Article:
    pmid: str
    version: int
    document: Document


@dataclass
class NoAbstract:
    pmid: str
    version: int


@dataclass
class Deletion:
    pmids: list[str]


@dataclass
class Rejected:
    error: DataError


Event = Article | NoAbstract | Deletion | Rejected


def check_md5(path: Path) -> None:
    """Compare with NLM's ``<file>.md5`` (``MD5(name)= hex``) when it lies beside the file."""
    md5_file = path.with_name(path.name + ".md5")
    if not md5_file.is_file():
        return
    m = re.search(r"\b([0-9a-fA-F]{32})\b", md5_file.read_text(errors="replace"))
    if not m:
        raise DataError(f"no MD5 sum found in {md5_file.name}", path=md5_file)
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest().lower() != m.group(1).lower():
        raise DataError(
            f"MD5 mismatch with {md5_file.name}: the file is incomplete or corrupt; download it "
            "again",
            path=path,
        )


def _open(path: Path) -> IO[bytes]:
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def _text(el: ET.Element | None) -> str:
    """All the text inside ``el`` (inline markup such as <i>, <sup> flattened), spaces tidied."""
    if el is None:
        return ""
    return " ".join("".join(el.itertext()).split())


def iter_file(path: Path, *, max_chars: int = MAX_DOC_CHARS) -> Iterator[Event]:
    """Stream one PubMed XML file (see the module docstring)."""
    path = Path(path)
    try:
        fh = _open(path)
    except OSError as e:
        raise DataError(f"cannot read: {e}", path=path) from None
    n = 0
    with fh:
        try:
            ctx = ET.iterparse(fh, events=("start", "end"))
            try:
                _, root = next(ctx)
            except (ET.ParseError, StopIteration) as e:
                raise _unreadable_start(path, e) from None
            if root.tag != "PubmedArticleSet":
                raise DataError(
                    f"not a PubMed XML file: the root element is <{root.tag}>, "
                    "not <PubmedArticleSet>",
                    path=path,
                )
            for event, el in ctx:
                if event != "end":
                    continue
                if el.tag == "PubmedArticle":
                    n += 1
                    yield _article(el, path, n, max_chars)
                    root.clear()
                elif el.tag == "DeleteCitation":
                    pmids = [_text(p) for p in el.findall("PMID")]
                    yield Deletion([p for p in pmids if p.isdigit()])
                    root.clear()
                elif el.tag == "PubmedBookArticle":  # NCBI Bookshelf records: not indexed
                    n += 1
                    root.clear()
        except (ET.ParseError, EOFError, OSError, zlib.error, StopIteration) as e:
            # a PubmedArticleSet (or a gzip stream) that breaks off: a damaged download
            what = "malformed XML" if isinstance(e, ET.ParseError) else "truncated or corrupt"
            raise DataError(
                f"{what} after {plural(n, 'record')} ({type(e).__name__}: {e}); the records "
                "before it were read. Download the file again (and check it against its .md5)",
                path=path,
            ) from None


def _unreadable_start(path: Path, e: Exception) -> DataError:
    """The error for a file whose first element cannot be read: an empty file or the start of
    a PubMed file cut short is a damaged download; anything else is not a PubMed XML file (a
    text file, HTML, JSON...)."""
    again = "Download the file again (and check it against its .md5)"
    try:
        with _open(path) as fh:
            head = fh.read(4096)
    except (OSError, EOFError, zlib.error):
        head = b""
    if not head.strip():
        return DataError(f"the file is empty. {again}", path=path)
    if b"PubmedArticleSet" in head:
        return DataError(
            f"malformed XML before the first record ({type(e).__name__}: {e}). {again}",
            path=path,
        )
    return DataError(
        f"not a PubMed XML file: not XML ({e}); give NLM's pubmed<YY>n<NNNN>.xml.gz files",
        path=path,
    )


def _article(el: ET.Element, path: Path, n: int, max_chars: int) -> Event:
    mc = el.find("MedlineCitation")
    pmid_el = mc.find("PMID") if mc is not None else None
    pmid = _text(pmid_el)
    where = f"{n}" + (f" (PMID {pmid})" if pmid else "")
    try:
        if pmid_el is None or not pmid:
            raise DataError("missing PMID", path=path, record=where, field="MedlineCitation/PMID")
        if not pmid.isdigit():
            raise DataError(f"PMID {pmid!r} is not a number", path=path, record=where, field="PMID")
        try:
            version = int(pmid_el.get("Version") or 1)
        except ValueError:
            raise DataError(
                f"PMID Version {pmid_el.get('Version')!r} is not a number",
                path=path,
                record=where,
                field="PMID/@Version",
            ) from None
        assert mc is not None
        art = mc.find("Article")
        if art is None:
            raise DataError("no Article element", path=path, record=where, field="Article")
        sections = [
            (" ".join((a.get("Label") or "").split()), _text(a))
            for a in art.findall("Abstract/AbstractText")
        ]
        sections = [(lab, t) for lab, t in sections if t]
        if not sections:
            return NoAbstract(pmid, version)
        title = _text(art.find("ArticleTitle")) or _text(art.find("VernacularTitle"))
        body = "\n".join(f"{lab.capitalize()}: {t}" if lab else t for lab, t in sections)
        text = f"{title}\n{body}" if title else body
        if len(text) > max_chars:
            raise DataError(
                f"abstract is {len(text):,} characters, over the {max_chars:,} limit",
                path=path,
                record=where,
                field="Abstract",
            )
        meta: dict[str, Any] = {"pmid": pmid, "source": "pubmed", "file": path.name}
        year = _year(art, mc, path, where)
        if year is not None:
            meta["year"] = year
        optional = {
            "title": title,
            "journal": _text(art.find("Journal/Title"))
            or _text(mc.find("MedlineJournalInfo/MedlineTA")),
            "meshes": "; ".join(
                _text(d) for d in mc.findall("MeshHeadingList/MeshHeading/DescriptorName")
            ),
            "pubtypes": "; ".join(
                _text(t) for t in art.findall("PublicationTypeList/PublicationType")
            ),
            "labels": ", ".join(dict.fromkeys(lab for lab, _ in sections if lab)),
            "doi": next(
                (
                    _text(a)
                    for a in el.findall("PubmedData/ArticleIdList/ArticleId")
                    if a.get("IdType") == "doi"
                ),
                "",
            ),
        }
        meta.update({k: v for k, v in optional.items() if v})
        if version != 1:
            meta["pmid_version"] = version
        return Article(pmid, version, make_document(pmid, text, meta))
    except DataError as e:
        return Rejected(e)


def _year(art: ET.Element, mc: ET.Element, path: Path, where: str) -> int | None:
    """Publication year: PubDate/Year, else the first year in PubDate/MedlineDate
    (``1998 Dec-1999 Jan``), else the electronic ArticleDate/Year."""
    pub = art.find("Journal/JournalIssue/PubDate")
    candidates = [
        ("PubDate/Year", _text(pub.find("Year")) if pub is not None else ""),
        ("PubDate/MedlineDate", _text(pub.find("MedlineDate")) if pub is not None else ""),
        ("ArticleDate/Year", _text(art.find("ArticleDate/Year"))),
    ]
    for fld, value in candidates:
        if not value:
            continue
        m = _YEAR.search(value) if fld.endswith("MedlineDate") else None
        if fld.endswith("MedlineDate"):
            if m:
                return int(m.group(1))
            continue
        if not value.isdigit() or not 1600 <= int(value) <= 2100:
            raise DataError(
                f"year {value!r} is not a plausible year", path=path, record=where, field=fld
            )
        return int(value)
    return None
