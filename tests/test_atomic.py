"""sift.atomic: a folder appears whole or not at all."""

from __future__ import annotations

import pytest

from sift.atomic import atomic_dir, read_json_or_none


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


def test_read_json_or_none_treats_missing_and_broken_files_as_absent(tmp_path):
    assert read_json_or_none(tmp_path / "missing.json") is None
    (tmp_path / "broken.json").write_text('{"half": ')
    assert read_json_or_none(tmp_path / "broken.json") is None
    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert read_json_or_none(tmp_path / "ok.json") == {"a": 1}


def test_write_json_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    from sift.atomic import write_json

    path = tmp_path / "deep" / "out.json"
    assert write_json(path, {"a": 1}) == path and read_json_or_none(path) == {"a": 1}
    write_json(path, {"p": tmp_path}, indent=1, default=str)
    assert read_json_or_none(path) == {"p": str(tmp_path)}
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]
    with pytest.raises(TypeError):  # not serialisable: the old file stays as it was
        write_json(path, {"p": object()})
    assert read_json_or_none(path) == {"p": str(tmp_path)}
