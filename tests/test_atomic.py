"""sift.atomic: a folder appears whole or not at all, and replaces only a folder of its own kind."""

from __future__ import annotations

import json

import pytest

from sift.atomic import FolderKind, atomic_dir, check_out_dir, read_json_or_none

# A kind for these tests: a folder of "a.txt"/"b.txt" whose identity is the manifest's "key".
NOTES = FolderKind(name="test-notes", noun="a notes", files=("a.txt", "b.txt", "manifest.json"),
                   identity_keys=("key",), legacy=lambda manifest: "old_key" in manifest)


def write_notes(folder, name="a.txt", text="x", key="k1"):
    (folder / name).write_text(text)
    (folder / "manifest.json").write_text(json.dumps({"kind": NOTES.name, "key": key}))


def siblings(path):
    """Every entry beside ``path`` (temporary or old folders a write may have left)."""
    return sorted(p.name for p in path.parent.iterdir())


def test_atomic_dir_replaces_the_old_folder_only_on_success(tmp_path):
    out = tmp_path / "index"
    with atomic_dir(out, NOTES, {"key": "k1"}) as tmp:
        write_notes(tmp, text="first")
        assert not out.exists(), "nothing may appear before the block ends"
    assert (out / "a.txt").read_text() == "first"

    with pytest.raises(RuntimeError):
        with atomic_dir(out, NOTES, {"key": "k1"}) as tmp:
            write_notes(tmp, text="half-written")
            raise RuntimeError("crash while writing")
    assert (out / "a.txt").read_text() == "first", "a failed write must leave the old folder as it was"

    with atomic_dir(out, NOTES, {"key": "k1"}) as tmp:  # same identity: a rebuild replaces
        write_notes(tmp, name="b.txt", text="second")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt", "manifest.json"]
    assert siblings(out) == ["index"], "no temporary or old siblings are left"


def test_a_folder_of_the_users_is_never_replaced_even_with_force(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("my notes")
    for force in (False, True):
        with pytest.raises(ValueError, match=r"victim is not a notes folder \(it holds notes.txt\)"):
            with atomic_dir(victim, NOTES, {"key": "k1"}, force=force) as tmp:
                write_notes(tmp)
    assert (victim / "notes.txt").read_text() == "my notes"
    assert siblings(victim) == ["victim"], "a refused write leaves nothing behind"
    # a folder of another kind is not ours either
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"kind": "sift-index", "key": "k1"}))
    with pytest.raises(ValueError, match="it is a sift-index folder"):
        check_out_dir(other, NOTES, force=True)
    # a file is not a folder
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        check_out_dir(tmp_path / "file", NOTES, force=True)


def test_empty_folders_are_accepted_and_own_folders_need_the_same_identity_or_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with atomic_dir(out, NOTES, {"key": "k1"}) as tmp:  # an empty folder is replaced
        write_notes(tmp, text="first", key="k1")
    with pytest.raises(ValueError, match=r"holds a notes \(key k1\), not a notes \(key k2\); pass --force"):
        with atomic_dir(out, NOTES, {"key": "k2"}) as tmp:
            write_notes(tmp, text="second", key="k2")
    assert (out / "a.txt").read_text() == "first" and siblings(out) == ["out"]
    with atomic_dir(out, NOTES, {"key": "k2"}, force=True) as tmp:
        write_notes(tmp, text="second", key="k2")
    assert (out / "a.txt").read_text() == "second"
    check_out_dir(out, NOTES, None)  # identity not known yet (a preflight): any folder of the kind passes
    # a manifest from before "kind" existed is recognised by the kind's legacy rule
    (out / "manifest.json").write_text(json.dumps({"old_key": 1, "key": "k2"}))
    check_out_dir(out, NOTES, {"key": "k2"})
    # a folder of the kind holding a file of the user's is refused, even with force
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="but also notes.txt, which sift-ttft did not write"):
        check_out_dir(out, NOTES, {"key": "k2"}, force=True)


def test_dangerous_targets_are_refused_even_with_force(tmp_path, monkeypatch):
    work, home, state, data = (tmp_path / name for name in ("work", "home", "state", "data"))
    for folder in (work, home, state, data):
        folder.mkdir()
    (data / "corpus.jsonl").write_text("{}\n")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SIFT_HOME", str(state))
    cases = {".": "it is the current directory", str(tmp_path): "containing the current directory",
             str(home): "it is your home folder", str(state): "it is the state folder",
             str(data): "containing the input", str(data / "corpus.jsonl"): "it is the input",
             "/": "filesystem root"}
    for target, message in cases.items():
        with pytest.raises(ValueError, match=message):
            with atomic_dir(target, NOTES, force=True, protect=[data / "corpus.jsonl"]) as tmp:
                write_notes(tmp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "home", "state", "work"]
    assert (data / "corpus.jsonl").read_text() == "{}\n" and not list(work.iterdir())


def test_a_writer_must_declare_its_kind_and_files(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="must record"):
        with atomic_dir(out, NOTES) as tmp:
            (tmp / "a.txt").write_text("no manifest")
    with pytest.raises(RuntimeError, match="not declared"):
        with atomic_dir(out, NOTES) as tmp:
            write_notes(tmp)
            (tmp / "c.txt").write_text("undeclared")
    assert not out.exists() and siblings(out) == []


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
