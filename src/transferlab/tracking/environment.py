"""Tags that say where and with what a run was made, so it can be rerun."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

PACKAGES = ("torch", "torchvision", "pytorch-lightning", "hydra-core", "mlflow", "transferlab")


def environment_tags(device: str) -> dict[str, str]:
    """Computed once per process and working directory (whose repository `git` reads): a
    run's stages and a sweep's in-process jobs share them, so `git` runs once, not twice
    per run."""
    return _environment_tags(device, os.getcwd())


@functools.cache
def _environment_tags(device: str, folder: str) -> dict[str, str]:
    tags = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "device": device,
        "python": platform.python_version(),
        **{f"version.{name}": _version(name) for name in PACKAGES},
    }
    tags.update(_git_tags(folder))
    return tags


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
