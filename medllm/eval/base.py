"""The shared base of every evaluation: run directories, resume, hashing, the label runner.

A run directory holds::

    config.json    resolved settings, medllm version, sha256 of data/model/adapter, seed
    items.jsonl    one line per evaluated item (appended as it goes: a re-run resumes here)
    metrics.json   the figures;  report.md  tables;  *.png  plots

A run directory is tied to its *identity* (task, dataset and its hash, mode, model, adapter
...): opening it for a different identity is an error, never a silent mix of two runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medllm.errors import DataError, MedllmError, ModelNotAvailableError
from medllm.fsutil import sha256_dir, sha256_file

if TYPE_CHECKING:
    from medllm.config import Settings

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be at least 1 (got {limit}); leave it out to use all items")


def model_hash(resolved_path: str) -> str | None:
    """The converted model's recorded checksums (cheap), else a hash of its weight files."""
    p = Path(resolved_path)
    manifest = p / "medllm-manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        return str(m["source"]["sha256"])
    if p.is_dir():
        return sha256_dir(p)
    if p.is_file():
        return sha256_file(p)
    return None  # a hub id not yet downloaded


def check_adapter(adapter: Path, model_name: str, settings: Settings) -> dict[str, Any]:
    """Refuse an adapter trained on another base model; return its identity."""
    from medllm.models import KNOWN_MODELS
    from medllm.scoring.heads import LinearHead, is_head_dir

    if not adapter.exists():
        raise ModelNotAvailableError(f"adapter directory not found: {adapter}")
    cfg = adapter / "adapter_config.json"
    head = is_head_dir(adapter)
    if head:
        base = LinearHead.load(adapter).base
    elif not cfg.is_file():
        raise ModelNotAvailableError(
            f"{adapter} is not a LoRA adapter directory (no adapter_config.json)"
        )
    else:
        base = str(json.loads(cfg.read_text()).get("base_model_name_or_path") or "")
    spec = KNOWN_MODELS.get(model_name)
    accepted = {model_name, Path(model_name).name}
    if spec is not None:
        accepted |= {spec.hub_id, spec.hub_id.split("/")[-1], spec.name}
        accepted.add(str(settings.paths.models_dir / spec.name))
    if base and base not in accepted and Path(base).name not in accepted:
        raise ModelNotAvailableError(
            f"adapter {adapter} was trained on {base!r}, not on {model_name!r}: evaluate it "
            f"with --model {base} (or pass the adapter trained for {model_name})"
        )
    kind = "linear-head" if head else "lora"
    return {"path": str(adapter), "base": base, "sha256": sha256_dir(adapter), "kind": kind}


def scored_by(adapter_info: dict[str, Any] | None) -> str:
    """How label items are scored with this adapter (``check_adapter``'s answer, or None)."""
    if adapter_info and adapter_info.get("kind") == "linear-head":
        return "the adapter's linear head (label probabilities)"
    return "likelihood"


def scorer_description(adapter_info: dict[str, Any] | None) -> str:
    """The scorer, for run configs."""
    if scored_by(adapter_info) == "likelihood":
        return "medllm.scoring.score_options (likelihood over the options)"
    return "medllm.scoring.score_options (the adapter's linear head: label probabilities)"


# --------------------------------------------------------------------------- run directory


def _identity_of(path: Path) -> dict[str, Any] | None:
    """The identity recorded in run directory ``path``; None when it has none (or no such
    directory)."""
    try:
        old = json.loads((path / "config.json").read_text())["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return old if isinstance(old, dict) else None


def _shown(v: Any) -> str:
    return "none" if v is None else repr(v)


@dataclass
class RunDir:
    path: Path
    identity: dict[str, Any]
    config: dict[str, Any]
    created: bool = False  # the directory did not exist before this run opened it

    @classmethod
    def open(
        cls,
        path: Path,
        identity: dict[str, Any],
        config: dict[str, Any],
        *,
        fresh: bool = False,
        default: bool = False,
    ) -> RunDir:
        """Create ``path`` or reopen it for resuming; refuse one made for something else.

        ``default``: ``path`` is the name medllm chose (no ``--out``). Such a name leaves out
        settings that change the evaluation (split, ``--where``, …), so when it holds another
        evaluation this one goes to ``<path>-<hash of its identity>`` instead — the same
        directory on every re-run, so it resumes there — rather than refusing."""
        ident_json = json.dumps(identity, sort_keys=True, default=str)
        if default and not fresh and _identity_of(path) not in (None, json.loads(ident_json)):
            h = hashlib.sha256(ident_json.encode())
            path = path.with_name(f"{path.name}-{h.hexdigest()[:8]}")
        cfg_path = path / "config.json"
        created = not path.exists()
        if cfg_path.is_file() and not fresh:
            old = _identity_of(path)
            if old is None:
                raise DataError("not a medllm run directory (bad config.json)", path=path)
            diff = [k for k in sorted(set(old) | set(identity)) if old.get(k) != identity.get(k)]
            if diff:
                what = ", ".join(
                    f"{k}: {_shown(old.get(k))} there, {_shown(identity.get(k))} now" for k in diff
                )
                raise DataError(
                    f"this run directory belongs to another evaluation ({what}). Use another "
                    "--out, or --fresh to overwrite it",
                    path=path,
                )
        elif path.exists() and any(path.iterdir()) and not cfg_path.is_file():
            raise DataError(
                "exists and is not a medllm run directory; choose another --out", path=path
            )
        path.mkdir(parents=True, exist_ok=True)
        if fresh:
            for name in ("items.jsonl", "metrics.json", "predictions.json"):
                (path / name).unlink(missing_ok=True)
        full = {"identity": identity, **config}
        cfg_path.write_text(json.dumps(full, indent=2, default=str))
        return cls(path, identity, full, created)

    @property
    def items_path(self) -> Path:
        return self.path / "items.jsonl"

    def done(self) -> dict[str, dict[str, Any]]:
        """Items already evaluated (a truncated last line from a crash is ignored)."""
        out: dict[str, dict[str, Any]] = {}
        if not self.items_path.is_file():
            return out
        for line in self.items_path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            out[str(rec["id"])] = rec
        return out

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        text = self.items_path.read_text() if self.items_path.is_file() else ""
        with self.items_path.open("a", encoding="utf-8") as f:
            if text and not text.endswith("\n"):
                f.write("\n")  # after a crash mid-line
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_json(self, name: str, data: Any) -> Path:
        p = self.path / name
        p.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str))
        return p


def base_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    from medllm import __version__

    return {
        "medllm_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": settings.generation.seed,
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
        },
        "settings": settings.model_dump(mode="json"),
        **extra,
    }


def default_run_path(settings: Settings, *parts: str, where: str | None = None) -> Path:
    """``MEDLLM_HOME/runs/<parts>``; a run filtered by ``where`` (``--where``) ends in
    ``-where-<the filter, readable>-<8 hex of it>``, so that it never takes the name an
    unfiltered run of the same command would have (``year>=2005`` and ``year<=2005`` slug alike,
    hence the hash)."""
    from medllm.fsutil import slug

    if not where:
        return settings.paths.runs_dir / slug("-".join(_short(p) for p in parts if p), max_len=80)
    tag = hashlib.sha256(where.encode()).hexdigest()[:8]
    suffix = f"where-{slug(where, max_len=24)}-{tag}"
    head = slug("-".join(_short(p) for p in parts if p), max_len=80 - len(suffix) - 1)
    return settings.paths.runs_dir / f"{head}-{suffix}"


def _short(part: str) -> str:
    """A model given as a file path (a served GGUF's id is its path) named by its file."""
    p = Path(part)
    if ("/" in part or os.sep in part) and (p.suffix.lower() == ".gguf" or p.exists()):
        return p.stem
    return part


@dataclass
class RunResult:
    path: Path
    metrics: dict[str, Any]
    items: list[dict[str, Any]] = field(default_factory=list)


def progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    """A progress bar on stderr with items/s and ETA."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="item",
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
    )


def run_items(
    run: RunDir,
    ids: Sequence[str],
    step: Callable[[list[str]], list[dict[str, Any]]],
    *,
    batch_size: int,
    desc: str,
    show_progress: bool = True,
    sort_key: Callable[[str], Any] | None = None,
    known: Sequence[str] | None = None,
    prepare: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate the ids not yet in ``items.jsonl`` in batches (``step`` returns one record per
    id), appending as it goes; return all records in ``ids`` order.

    ``sort_key`` orders the work (e.g. by prompt length, so that a batch pads little).
    ``known``: every id of the data set when ``ids`` is a part of it (``--limit``): items of
    an earlier, longer run are kept (and left out of the result), not refused.
    ``prepare`` (e.g. loading the model) runs once before the first item, with the bar saying
    so; its time is not any item's latency and not in the bar's rate."""
    done = run.done()
    allowed = set(ids) | set(known or ())
    unknown = [k for k in done if k not in allowed]
    if unknown:
        raise DataError(
            f"items.jsonl holds {len(unknown)} items that are not in this evaluation's data "
            f"(e.g. {unknown[0]!r}); use another --out or --fresh",
            path=run.items_path,
        )
    done_here = sum(i in done for i in ids)
    todo = [i for i in ids if i not in done]
    if sort_key is not None:
        todo.sort(key=sort_key)
    if done_here:
        logger.info("resuming: %d of %d items already evaluated", done_here, len(ids))
    bar = progress(len(ids), len(ids) - len(todo), desc, show_progress)
    try:
        if todo and prepare is not None:
            bar.set_description(f"{desc}: loading the model")
            prepare()
            bar.set_description(desc)
            bar.start_t = bar.last_print_t = time.time()  # the rate counts the items only
        for i in range(0, len(todo), batch_size):
            batch = todo[i : i + batch_size]
            t0 = time.perf_counter()
            recs = step(batch)
            dt = (time.perf_counter() - t0) / max(len(batch), 1)
            for r in recs:
                r.setdefault("latency_s", round(dt, 4))
                done[str(r["id"])] = r
            run.append(recs)
            bar.update(len(batch))
    finally:
        bar.close()
    return [done[i] for i in ids]


def require(condition: bool, message: str) -> None:
    if not condition:
        raise MedllmError(message)
