"""Directories and files that appear complete or not at all; safe names; content hashes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medllm.errors import DataError, MedllmError


def slug(name: str, max_len: int | None = None) -> str:
    """A file- and Chroma-safe name (``[a-z0-9._-]``) for a model name, path or run label: an
    existing path gives its last part, ``/`` becomes ``--``. The one slug of medllm (store
    collection names, run directories)."""
    base = Path(name).name if ("/" in name and Path(name).expanduser().exists()) else name
    s = re.sub(r"[^a-zA-Z0-9._-]+", "-", base.replace("/", "--")).strip("-._").lower()
    s = s[:max_len].rstrip("-._") if max_len else s
    return s or "model"


def refuse_overwrite(output: Path, overwrite: bool) -> None:
    """Refuse to write into a non-empty ``output`` unless ``overwrite`` (``--overwrite``)."""
    if output.exists() and any(output.iterdir()) and not overwrite:
        what = "an adapter" if (output / "adapter_config.json").is_file() else "files"
        raise MedllmError(f"{output} already holds {what}; pass --overwrite to replace it")


@contextmanager
def staged_dir(target: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a fresh directory beside ``target``; move it into place when the block succeeds.

    Everything is written into a hidden temporary directory in ``target``'s parent (same
    filesystem, so the final ``os.replace`` is atomic). On an exception, including
    KeyboardInterrupt, the temporary directory is removed and ``target`` is left as it was, so
    an interrupted write never leaves a directory that looks complete. When ``target`` already
    exists it is replaced, or with ``replace=False`` kept (another writer won the race) and
    the new copy discarded.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp's 0o700 would carry over to the final directory
    try:
        yield tmp
        if target.exists():
            if not replace:
                shutil.rmtree(tmp, ignore_errors=True)
                return
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_dir(path: Path, patterns: Sequence[str] = ("*.json", "*.safetensors", "*.bin")) -> str:
    """One hash over the named files of a directory (names and contents)."""
    h = hashlib.sha256()
    for pat in patterns:
        for p in sorted(path.glob(pat)):
            h.update(p.name.encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def read_utf8(path: Path) -> str:
    """``path``'s text, decoded strictly: a file that cannot be read, or with invalid UTF-8,
    raises a DataError naming it (and the first bad byte) — never text with bytes dropped."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read: {e}", path=path) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"not valid UTF-8 at byte {e.start} (0x{raw[e.start]:02x}); save it as UTF-8",
            path=path,
        ) from None
