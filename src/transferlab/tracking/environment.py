"""Tags that say where and with what a run was made, so it can be rerun."""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

PACKAGES = ("torch", "torchvision", "pytorch-lightning", "hydra-core", "mlflow", "transferlab")
MACHINE_TAG = "transferlab.machine"  # the machine id, hashed (machine_tags)
BOOT_TAG = "transferlab.boot_id"
MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
MACHINE_KEY = b"transferlab.machine"  # makes the recorded id transferlab's own


def environment_tags(device: str) -> dict[str, str]:
    """Computed once per process and working directory (whose repository `git` reads): a
    run's stages and a sweep's in-process jobs share them, so `git` runs once, not twice
    per run."""
    return _environment_tags(device, os.getcwd())


@functools.cache
def _environment_tags(device: str, folder: str) -> dict[str, str]:
    tags = {
        **source_tags(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "device": device,
        "python": platform.python_version(),
        **{f"version.{name}": _version(name) for name in PACKAGES},
    }
    tags.update(_git_tags(folder))
    return tags


def source_tags() -> dict[str, str]:
    """The program that made the run (`transferlab-train`): the UI's Source column."""
    return {"mlflow.source.name": Path(sys.argv[0]).name, "mlflow.source.type": "LOCAL"}


def machine_tags() -> dict[str, str]:
    """The machine and the boot of it that a run's process runs on: only that machine can
    tell whether the process is gone (tracking.orphans), and a process of an earlier boot
    certainly is. Host names and pid namespaces repeat across machines; machine ids do not.
    Recorded as an HMAC of the machine id, as machine-id(5) asks: the id itself is
    confidential. Tags that cannot be read are left out (the run is then never judged)."""
    found = {MACHINE_TAG: _machine(), BOOT_TAG: _read_id(BOOT_ID_FILE)}
    return {tag: value for tag, value in found.items() if value}


def _machine() -> str | None:
    for path in MACHINE_ID_FILES:
        machine_id = _read_id(path)
        if machine_id:
            return hmac.new(machine_id.encode(), MACHINE_KEY, hashlib.sha256).hexdigest()[:32]
    return None


def _read_id(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def device_name(accelerator: str) -> str:
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _git_tags(folder: str) -> dict[str, str]:
    """The commit of the working directory's repository (the research code being run)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit, "git.dirty": str(dirty).lower()}
