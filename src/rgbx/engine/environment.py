"""What a run was made with, recorded in its model files (``environment``) so that a result can be traced to its code:
rgbx's version and source commit, torch, Python, the device, and each plugin with a hash of its source. ``rgbx info
FILE`` prints it; loading a file whose plugin source has changed since says so.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
import warnings
from pathlib import Path

import torch

import rgbx
from rgbx.engine.fastpath import describe_cpu
from rgbx.plugins import loaded_plugins, plugin_source


def source_commit(folder: Path | None = None) -> str | None:
    """The git commit of rgbx's source (``+modified`` when its tracked files differ from it), or None outside a
    git checkout (an installed wheel)."""
    folder = folder or Path(rgbx.__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)

    try:
        # rgbx's own files must be tracked there: an installed copy inside someone else's repository is not its source
        if git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:
            return None
        head = git("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0:
            return None
        modified = git("status", "--porcelain", "--untracked-files=no", "--", ".").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+modified" if modified else "")


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def plugin_hashes() -> dict[str, str | None]:
    """Each loaded plugin → the sha256 of its source file (None where it has no file, e.g. a namespace package)."""
    hashes = {}
    for spec in loaded_plugins():
        source = plugin_source(spec)
        hashes[spec] = file_sha256(source) if source is not None and source.is_file() else None
    return hashes


def run_environment(device: torch.device) -> dict:
    """The record written into a run's model files."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = describe_cpu()
    return {"rgbx": rgbx.__version__, "rgbx_commit": source_commit(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": sys.platform, "device": f"{device.type}: {name}",
            "plugins": plugin_hashes()}


def describe_environment(env: dict) -> str:
    commit = f" ({env['rgbx_commit']})" if env.get("rgbx_commit") else ""
    text = (f"rgbx {env.get('rgbx')}{commit}, torch {env.get('torch')}, Python {env.get('python')}, "
            f"{env.get('device')}")
    for spec, sha in (env.get("plugins") or {}).items():
        text += f"; plugin {spec}" + (f" (sha256 {sha[:12]})" if sha else "")
    return text


def check_plugin_sources(env: dict, path) -> list[str]:
    """Warn, for each plugin loaded now whose source differs from the one the file was trained with; returns the
    messages."""
    now = plugin_hashes()
    messages = []
    for spec, sha in (env.get("plugins") or {}).items():
        if sha and now.get(spec) and now[spec] != sha:
            messages.append(f"{path}: the plugin {spec} has changed since this model was trained (sha256 "
                            f"{sha[:12]} then, {now[spec][:12]} now)")
    for message in messages:
        warnings.warn(message, stacklevel=3)
    return messages
