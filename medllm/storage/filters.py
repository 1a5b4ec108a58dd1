"""Metadata pre-filters: ``year>=2010,pubtype=Review,mesh=Diabetes Mellitus``.

Syntax (``--where`` on ``retrieve``/``ask``/``eval``, ``retrieval.where`` in the settings):
clauses joined by ``,`` or ``;`` (or given as several ``--where``), all of which must hold.

* ``year=2015``, ``year>=2010``, ``year>2009``, ``year<=2020``, ``year<2021``,
  ``year=2010..2015`` (inclusive); documents without a year never pass a year clause;
* ``pubtype=Review`` — the document has that publication type (PubMed's
  ``PublicationType``: Review, Randomized Controlled Trial, Meta-Analysis...);
* ``mesh=Diabetes Mellitus, Type 2`` — the document is indexed with that MeSH descriptor;
* ``A|B`` inside a ``pubtype`` or ``mesh`` clause means either.

Names match whole terms, case-insensitively (``mesh=diabetes mellitus`` does not match
``Diabetes Mellitus, Type 2``). A comma only starts a new clause when a known key
(``year``, ``pubtype``, ``mesh``) follows it, so MeSH names with commas need no quoting.

Each chunk in Chroma carries one flag key per term (``mesh:<term>``, ``pubtype:<term>``,
lower case), added at ingestion (:func:`flag_metadata`) and never embedded, so dense search
can filter inside Chroma (``where``) before the nearest-neighbour search. BM25 filters with a
0/1 weight mask over its documents, built from the same metadata (:func:`mask`,
:func:`mask_columns`); dense search uses that mask too, to post-filter the nearest chunk ids
when the filter passes enough documents (``Retriever._dense_post_filtered``: the same result,
without Chroma's SQLite pre-filter).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medllm.errors import DataError

if TYPE_CHECKING:
    import numpy as np

# metadata field holding "; "-joined terms → the filter key and the chunk flag prefix
LIST_FIELDS = {"mesh": "meshes", "pubtype": "pubtypes"}
KEYS = ("year", *LIST_FIELDS)
FLAGS_VERSION = 1  # recorded in the store manifest when every chunk carries the flags
_CLAUSE = re.compile(r"^\s*(year|pubtype|mesh)\s*(>=|<=|=|>|<)\s*(.*?)\s*$", re.IGNORECASE)
_SPLIT = re.compile(r"[;,](?=\s*(?:year|pubtype|mesh)\s*(?:>=|<=|=|>|<))", re.IGNORECASE)


@dataclass(frozen=True)
class Where:
    """A parsed filter: an inclusive year range and AND-ed groups of OR-ed terms."""

    year_min: int | None = None
    year_max: int | None = None
    terms: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (key, alternatives), lower case

    def __str__(self) -> str:
        parts = []
        if self.year_min is not None and self.year_min == self.year_max:
            parts.append(f"year={self.year_min}")
        else:
            if self.year_min is not None:
                parts.append(f"year>={self.year_min}")
            if self.year_max is not None:
                parts.append(f"year<={self.year_max}")
        parts += [f"{k}={'|'.join(alts)}" for k, alts in self.terms]
        return ",".join(parts)

    def with_years(self, years: tuple[int, int] | None) -> Where:
        """This filter intersected with an inclusive year range."""
        if years is None:
            return self
        lo = max(x for x in (self.year_min, years[0]) if x is not None)
        hi = min(x for x in (self.year_max, years[1]) if x is not None)
        return Where(lo, hi, self.terms)

    @property
    def needs_flags(self) -> bool:
        return bool(self.terms)


def parse(spec: str | Sequence[str] | Where | None) -> Where | None:
    """Parse ``--where`` text (one string or several); None or blank gives None."""
    if spec is None or isinstance(spec, Where):
        return spec
    texts = [spec] if isinstance(spec, str) else list(spec)
    clauses = [c for t in texts for c in _SPLIT.split(t) if c.strip()]
    if not clauses:
        return None
    lo: int | None = None
    hi: int | None = None
    terms: list[tuple[str, tuple[str, ...]]] = []
    for c in clauses:
        m = _CLAUSE.match(c)
        if not m:
            raise DataError(
                f"cannot read the filter clause {c.strip()!r}; use year>=2010, "
                "year=2010..2015, pubtype=Review or mesh=Diabetes Mellitus (joined by ',')",
                field="where",
            )
        key, op, value = m.group(1).lower(), m.group(2), m.group(3)
        if key == "year":
            a, b = _years(op, value, c)
            lo = a if lo is None or (a is not None and a > lo) else lo
            hi = b if hi is None or (b is not None and b < hi) else hi
        else:
            if op != "=":
                raise DataError(f"{key} takes '=', not {op!r} (in {c.strip()!r})", field="where")
            alts = tuple(dict.fromkeys(a.strip().lower() for a in value.split("|") if a.strip()))
            if not alts:
                raise DataError(f"no {key} given in {c.strip()!r}", field="where")
            terms.append((key, alts))
    if lo is not None and hi is not None and lo > hi:
        raise DataError(f"the year range {lo}..{hi} is empty", field="where")
    return Where(lo, hi, tuple(terms))


def _years(op: str, value: str, clause: str) -> tuple[int | None, int | None]:
    try:
        if op == "=" and ".." in value:
            a, b = (int(x) for x in value.split("..", 1))
            return a, b
        y = int(value)
    except ValueError:
        raise DataError(
            f"year must be a number or FROM..TO, not {value!r} (in {clause.strip()!r})",
            field="where",
        ) from None
    return {"=": (y, y), ">=": (y, None), ">": (y + 1, None), "<=": (None, y), "<": (None, y - 1)}[
        op
    ]


# ----------------------------------------------------------------------------- ingestion side


def split_terms(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    if not isinstance(value, str):
        return []
    return [t.strip() for t in value.split(";") if t.strip()]


def flag_key(key: str, term: str) -> str:
    return f"{key}:{term.strip().lower()}"


def flag_metadata(meta: dict[str, Any]) -> dict[str, int]:
    """The flag keys a chunk with document metadata ``meta`` carries in Chroma.

    The value is the integer 1, not True: Chroma's SQLite metadata table indexes
    ``(key, int_value)`` but not booleans, so an integer flag is an index lookup where a
    boolean one scans every metadata row."""
    out = {}
    for key, fld in LIST_FIELDS.items():
        for term in split_terms(meta.get(fld)):
            out[flag_key(key, term)] = 1
    return out


def is_flag(key: str) -> bool:
    return key.split(":", 1)[0] in LIST_FIELDS and ":" in key


# ----------------------------------------------------------------------------- Chroma side


def chroma_where(w: Where | None) -> dict[str, Any] | None:
    """The Chroma ``where`` for a filter (None for no filter)."""
    if w is None:
        return None
    conds: list[dict[str, Any]] = []
    if w.year_min is not None:
        conds.append({"year": {"$gte": int(w.year_min)}})
    if w.year_max is not None:
        conds.append({"year": {"$lte": int(w.year_max)}})
    for key, alts in w.terms:
        ors: list[dict[str, Any]] = [{flag_key(key, a): 1} for a in alts]
        conds.append(ors[0] if len(ors) == 1 else {"$or": ors})
    if not conds:
        return None
    return conds[0] if len(conds) == 1 else {"$and": conds}


# ----------------------------------------------------------------------------- BM25 side


def mask(w: Where, metadata: Iterable[dict[str, Any]]) -> np.ndarray:
    """1.0 for the documents (in corpus order) that pass ``w``, else 0.0."""
    import numpy as np

    keep = []
    for meta in metadata:
        keep.append(passes(w, meta))
    return np.asarray(keep, dtype=np.float32)


def passes(w: Where, meta: dict[str, Any]) -> bool:
    if w.year_min is not None or w.year_max is not None:
        try:
            y = int(meta.get("year"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        if (w.year_min is not None and y < w.year_min) or (
            w.year_max is not None and y > w.year_max
        ):
            return False
    for key, alts in w.terms:
        have = {t.lower() for t in split_terms(meta.get(LIST_FIELDS[key]))}
        if not have.intersection(alts):
            return False
    return True


def mask_columns(w: Where, cols: dict[str, Any], n: int) -> np.ndarray:
    """Like :func:`mask`, from the BM25 side columns (``bm25.write_columns``): years and
    term → documents postings, so no document is read."""
    import numpy as np

    keep = np.ones(n, dtype=bool)
    years = cols["years"]
    if w.year_min is not None:
        keep &= years >= w.year_min
    if w.year_max is not None:
        keep &= (years <= w.year_max) & (years >= 0)
    for key, alts in w.terms:
        terms, indptr, indices = (cols[f"{key}_{x}"] for x in ("terms", "indptr", "indices"))
        hit = np.zeros(n, dtype=bool)
        for a in alts:
            t = int(np.searchsorted(terms, a))
            if t < len(terms) and terms[t] == a:
                hit[indices[indptr[t] : indptr[t + 1]]] = True
        keep &= hit
    return keep.astype(np.float32)
