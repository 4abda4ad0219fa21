"""The sha256 a run records of each weights file it writes, and the check of a file read
back against it: whoever can write to a shared store can replace an artifact after the run,
and rerun, resume, export and transfer would then build from weights the run never made.

A run tags `transferlab.sha256.<path>` with the file's hex digest when it writes it: the
artifact path (`backbone.pt`, `checkpoints/best.ckpt`) or, for the local `last.ckpt` that
`resume` continues from, LAST_CHECKPOINT. Light to import: hashlib only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from transferlab.errors import UserError

DIGEST_TAG = "transferlab.sha256."  # + the file's path in its run
LAST_CHECKPOINT = "checkpoints/last.ckpt"  # a run's last.ckpt, in its stage folder
ROLE_TAG = "transferlab.role"  # set on every transferlab run: those record their digests


def digest_tag(path: str) -> str:
    return DIGEST_TAG + path


def file_sha256(path: str | Path) -> str:
    """The file's sha256 (hex), read in blocks: checkpoints can be large."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def check_recorded_digest(
    run_id: str,
    tags: Mapping[str, str],
    path: str,
    local: str | Path,
    what: str,
    remedy: str = "",
) -> None:
    """Refuses `local`, the run's file `path` as read back, unless its sha256 is the one the
    run recorded. `what` starts the one-line error (the key or command that read it),
    `remedy` ends it."""
    expected = tags.get(digest_tag(path))
    found = file_sha256(local)
    suffix = f"; {remedy}" if remedy else ""
    if expected is None:
        raise UserError(
            f"{what}: run {run_id} recorded no sha256 of its {path} (found {found}), as every "
            f"transferlab run does for each weights file it writes: refused{suffix}"
        )
    if found != expected:
        raise UserError(
            f"{what}: {path} of run {run_id} has sha256 {found}, not the {expected} the run "
            f"recorded (replaced since the run wrote it): refused{suffix}"
        )
