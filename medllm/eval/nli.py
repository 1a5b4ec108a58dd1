"""Natural-language inference: MedNLI (``sentence1``/``sentence2``/``gold_label``) or
premise/hypothesis/label files such as NLI4CT. The label set is taken from the data (MedNLI has
three labels, NLI4CT two); the prompt is the fine-tuning format of :mod:`medllm.finetune.tasks`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medllm.errors import DataError
from medllm.eval.label import LabelItem, LabelTask

SCHEMAS = (("sentence1", "sentence2", "gold_label"), ("premise", "hypothesis", "label"))


def _field(rec: dict[str, Any], key: str, path: Path, rid: str) -> str:
    v = rec.get(key)
    if not isinstance(v, str) or not v.strip():
        raise DataError("missing or empty", path=path, record=rid, field=key)
    return v.strip()


def nli_task(path: Path, *, split: str | None = None) -> LabelTask:
    from medllm.finetune import tasks

    rows = tasks.read_rows(Path(path))
    first = rows[0][1]
    schema = next((s for s in SCHEMAS if all(k in first for k in s)), None)
    if schema is None:
        raise DataError(
            "not an NLI file: records need sentence1/sentence2/gold_label (MedNLI) or "
            f"premise/hypothesis/label; found fields {sorted(first)[:8]}",
            path=path,
            record=rows[0][0],
        )
    prem, hyp, lab = schema
    items = []
    for rid, rec in rows:
        if split is not None and rec.get("split") != split:
            continue
        label = _field(rec, lab, path, rid).lower()
        if label not in tasks.NLI_OPTIONS:
            raise DataError(
                f"unknown label {label!r}; expected one of {', '.join(tasks.NLI_OPTIONS)}",
                path=path,
                record=rid,
                field=lab,
            )
        msgs = tasks.nli_messages(_field(rec, prem, path, rid), _field(rec, hyp, path, rid))
        rec_id = str(rec.get("pairID") or rec.get("id") or rid)
        items.append(LabelItem(rec_id, label, msgs))
    if not items:
        raise DataError(f"no records with split {split!r}", path=path)
    seen = {it.gold for it in items}
    options = tuple(o for o in tasks.NLI_OPTIONS if o in seen or schema == SCHEMAS[0])
    return LabelTask(
        name="nli",
        variant=split or "",
        data_path=Path(path),
        options=options,
        items=items,
        identity={"split": split},
    )
