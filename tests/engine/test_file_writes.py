"""atomic_write (every model file and training state goes through it): the leftovers of a write killed midway are
found and removed, and nothing else is; the written file has the permissions open() would give it; the rename is
made durable by an fsync of the folder."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import pytest

from rgbx.engine.checkpoint import remove_unfinished_writes as reexported
from rgbx.models.model_file import atomic_write, remove_unfinished_writes


def test_a_killed_write_leaves_a_file_that_remove_unfinished_writes_deletes(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.state.pt").write_bytes(b"the previous state")
    # a write killed midway (SIGKILL: no finally, no atexit), as the out-of-memory killer or `kill -9` does it
    script = textwrap.dedent(f"""
        import os, signal
        from rgbx.models.model_file import atomic_write

        def write(tmp):
            with open(tmp, "wb") as f:
                f.write(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)

        atomic_write({str(folder / "last.state.pt")!r}, write)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert run.returncode == -9, run.stderr.decode()
    left = [p for p in folder.iterdir() if p.name != "last.state.pt"]
    assert len(left) == 1 and left[0].name.startswith(".last.state.pt.") and left[0].name.endswith(".tmp"), left
    assert (folder / "last.state.pt").read_bytes() == b"the previous state"  # never damaged

    older = folder / ".best.safetensors.k2j_h4g5.tmp"  # what versions before the rgbx-partial mark left
    older.write_bytes(b"x")
    kept = [".notes.tmp", ".last.state.pt.tmp", ".my.backup.abcdefgh.tmp", ".x.rgbx-partial-abc.tmp",
            "last.safetensors.rgbx-partial-abcdefgh.tmp", ".plot.png.abcdefgh.tmp", "notes.txt"]
    for name in kept:
        (folder / name).write_text("the user's")
    (folder / ".dir.rgbx-partial-abcdefgh.tmp").mkdir()  # a folder with the name: not a file atomic_write left
    target = tmp_path / "elsewhere.txt"
    target.write_text("kept")
    (folder / ".link.pt.rgbx-partial-abcdefgh.tmp").symlink_to(target)
    sub = folder / "sub"
    sub.mkdir()
    (sub / ".last.state.pt.rgbx-partial-abcdefgh.tmp").write_text("not in the folder itself")

    removed = remove_unfinished_writes(folder)
    assert sorted(removed) == sorted([left[0], older])
    assert not left[0].exists() and not older.exists()
    assert all((folder / name).read_text() == "the user's" for name in kept)
    assert (folder / ".dir.rgbx-partial-abcdefgh.tmp").is_dir() and target.read_text() == "kept"
    assert (folder / ".link.pt.rgbx-partial-abcdefgh.tmp").is_symlink()
    assert (sub / ".last.state.pt.rgbx-partial-abcdefgh.tmp").is_file()
    assert remove_unfinished_writes(folder) == []
    assert remove_unfinished_writes(tmp_path / "missing") == []
    assert reexported is remove_unfinished_writes  # the engine's import


def test_atomic_writes_temporary_file_is_one_remove_unfinished_writes_recognises(tmp_path):
    seen = []
    atomic_write(tmp_path / "model.safetensors", lambda tmp: (seen.append(tmp), open(tmp, "wb").close()))
    leftover = tmp_path / os.path.basename(seen[0])
    leftover.write_bytes(b"as if killed")  # the same name, left behind
    assert remove_unfinished_writes(tmp_path) == [leftover]
    assert (tmp_path / "model.safetensors").is_file()


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_written_files_have_the_permissions_open_gives(tmp_path, umask):
    """Not mkstemp's 0600: others on a shared file system read the models as they read config.yaml."""
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w"):
            pass
        path = atomic_write(tmp_path / "model.safetensors", lambda tmp: open(tmp, "wb").close())
        replaced = atomic_write(path, lambda tmp: open(tmp, "wb").close())  # over an existing file too
    finally:
        os.umask(old)
    expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert expected == 0o666 & ~umask
    assert stat.S_IMODE(path.stat().st_mode) == expected
    assert stat.S_IMODE(replaced.stat().st_mode) == expected


@pytest.mark.skipif(os.name != "posix", reason="directory fsync is POSIX")
def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append((stat.S_ISDIR(os.fstat(fd).st_mode), os.path.exists(tmp_path / "model.safetensors")))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(tmp_path / "model.safetensors", lambda tmp: open(tmp, "wb").close())
    assert synced == [(False, False), (True, True)]  # the file before the rename, the folder after it

    def refused(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")  # a file system that cannot fsync a folder
        real(fd)

    monkeypatch.setattr(os, "fsync", refused)
    assert atomic_write(tmp_path / "other.safetensors", lambda tmp: open(tmp, "wb").close()).is_file()
