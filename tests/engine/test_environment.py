"""rgbx.engine.environment.source_commit: the commit of rgbx's own source, never another repository's."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from rgbx.engine.environment import source_commit

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_the_commit_of_the_package_folder_and_only_when_it_is_tracked(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "README").write_text("a project\n")
    git(tmp_path, "add", "README")
    git(tmp_path, "commit", "-qm", "first")
    package = tmp_path / "venv" / "rgbx"  # an installed copy inside someone else's repository: not its source
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    assert source_commit(package) is None
    git(tmp_path, "add", "venv/rgbx/__init__.py")  # now the package's source is this repository's
    git(tmp_path, "commit", "-qm", "the package")
    head = git(tmp_path, "rev-parse", "--short=12", "HEAD")
    assert source_commit(package) == head
    (package / "__init__.py").write_text("x = 1\n")
    assert source_commit(package) == head + "+modified"
    (tmp_path / "README").write_text("changed outside the package\n")  # only the package's files count
    (package / "__init__.py").write_text("")
    assert source_commit(package) == head
    assert source_commit(tmp_path / "nowhere") is None
