"""sift.atomic: a folder appears whole or not at all."""

from __future__ import annotations

import pytest

from sift.atomic import atomic_dir


def test_atomic_dir_replaces_the_old_folder_only_on_success(tmp_path):
    out = tmp_path / "index"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
        assert not out.exists(), "nothing may appear before the block ends"
    assert (out / "a.txt").read_text() == "first"

    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("half-written")
            raise RuntimeError("crash while writing")
    assert (out / "a.txt").read_text() == "first", "a failed write must leave the old folder as it was"

    with atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"], "no temporary or old siblings are left"
