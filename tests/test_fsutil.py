from __future__ import annotations

from pathlib import Path

import pytest

from medllm.fsutil import staged_dir


def _leftovers(parent: Path, target: Path) -> list[str]:
    """Staging directories left beside ``target`` (they are hidden: ``.<name>.*``)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{target.name}."))


def test_staged_dir_appears_complete(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with staged_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not target.exists()  # nothing visible until the block succeeds
    assert (target / "a.txt").read_text() == "1"
    assert target.stat().st_mode & 0o777 == 0o755
    assert _leftovers(tmp_path, target) == []


def test_staged_dir_failure_keeps_the_old_target(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), staged_dir(target) as tmp:
        (tmp / "new.txt").write_text("half")
        raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert _leftovers(tmp_path, target) == []


def test_staged_dir_replace_or_keep(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with staged_dir(target, replace=False) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    with staged_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert _leftovers(tmp_path, target) == []
