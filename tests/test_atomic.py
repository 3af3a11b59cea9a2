"""atomic_path / write_atomic: the bytes reach the disk before the rename, and a killed writer's leftovers go."""

import os
import signal
import time

import pytest

from v2s_nb import atomic


def test_temporary_is_synced_before_it_is_renamed(tmp_path, monkeypatch):
    """A rename of unsynced data can leave an empty file under the final name after a power cut: the temporary is
    fsynced first, then the folder (the rename itself)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "out.bin"
    with atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"abc")
    kinds = [k for k, _ in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    assert events[0][1] == events[1][1] == str(tmp)  # the temporary's bytes, before it became the target
    assert events[2][1] == str(tmp_path)
    assert target.read_bytes() == b"abc"

    events.clear()
    atomic.write_atomic(tmp_path / "w.txt", lambda f: f.write("x"), mode="w")
    assert [k for k, _ in events] == ["fsync", "replace", "fsync"]
    assert (tmp_path / "w.txt").read_text() == "x"


def test_a_killed_writers_temporaries_are_removed_by_the_next_write(tmp_path):
    """SIGKILL runs no ``finally``: its hidden temporary would stay forever. The next write of the same target
    removes those untouched for STALE_TEMPORARY_S, and leaves a live writer's (recent) one and other files."""
    target = tmp_path / "clip.mp4"
    old = tmp_path / ".clip.mp4.k3j2.part.mp4"
    live = tmp_path / ".clip.mp4.x9y8.part.mp4"
    other = tmp_path / ".other.mp4.a1b2.part.mp4"
    for p in (old, live, other):
        p.write_bytes(b"partial")
    then = time.time() - atomic.STALE_TEMPORARY_S - 60
    os.utime(old, (then, then))
    os.utime(other, (then, then))
    with atomic.atomic_path(target, suffix=".part.mp4") as tmp:
        tmp.write_bytes(b"done")
    assert not old.exists()
    assert live.exists() and other.exists()
    assert target.read_bytes() == b"done"


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_a_folder_at_the_target_is_refused_before_writing(tmp_path):
    """A folder given as the file name failed only at the rename, naming the hidden temporary ('.demo.x1y2.png' ->
    'demo'); a file where a folder should be said only 'File exists'. Both are refused before the block runs."""
    folder = tmp_path / "demo"
    folder.mkdir()
    ran = []
    with pytest.raises(IsADirectoryError, match=r"demo' is a folder; give a file name such as '.*demo/output\.png'"):
        with atomic.atomic_path(folder, suffix=".png") as tmp:
            ran.append(tmp)
    with pytest.raises(IsADirectoryError, match=r"demo' is a folder; give a file name\.$"):
        atomic.write_atomic(folder, lambda f: ran.append(f))
    (tmp_path / "a.png").write_bytes(b"png")
    with pytest.raises(NotADirectoryError, match=r"a\.png' is a file, not a folder"):
        atomic.write_atomic(tmp_path / "a.png" / "sub" / "state.pt", lambda f: ran.append(f))
    assert ran == [] and sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "demo"]
    assert list(folder.iterdir()) == []


def test_write_together_moves_all_or_none(tmp_path, monkeypatch):
    """A set of outputs (the demo's video, side-by-side, sheet, timings) is always one run's: nothing moves until all
    are written, and a Ctrl-C during the moves is held back until they are done."""
    targets = {"video": tmp_path / "a.mp4", "json": tmp_path / "sub" / "t.json"}
    for p in targets.values():
        p.parent.mkdir(exist_ok=True)
        p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.write_together(targets) as tmp:
            tmp["video"].write_text("new")
            raise RuntimeError("a later output failed")
    assert all(p.read_text() == "old" for p in targets.values())
    assert not [p for p in tmp_path.rglob(".*")]
    with atomic.write_together(targets) as tmp:
        assert all(t.parent == targets[k].parent and t.suffix == targets[k].suffix for k, t in tmp.items())
        for t in tmp.values():
            t.write_text("new")
    assert all(p.read_text() == "new" for p in targets.values())

    # Ctrl-C while the files are moved: held back until all are in place, then raised. Python's own SIGINT handler
    # for this part: a run started in the background (nohup, CI) inherits SIGINT ignored, and then none is raised
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with atomic.write_together(targets) as tmp:
                for t in tmp.values():
                    t.write_text("newer")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(calls) == 2 and all(p.read_text() == "newer" for p in targets.values())


def test_a_folder_that_cant_be_written_is_named_not_the_temporary(tmp_path, monkeypatch):
    """A read-only folder failed naming the hidden temporary ('.tensors.pt.x1y2.part'), a file never asked for."""
    import errno
    import tempfile

    def read_only(*args, dir=None, prefix="", suffix=""):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, prefix + "x1y2" + suffix))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(PermissionError, match=r"can't write 'tensors\.pt' in '.*r' \(Permission denied\): choose a "
                                              r"folder you can write to") as err:
        atomic.write_atomic(tmp_path / "r" / "tensors.pt", lambda f: f.write(b"x"))
    assert ".part" not in str(err.value) and err.value.errno == errno.EACCES
