"""Checkpoints are written whole or not at all: through a temporary file in their own
folder (whatever TMPDIR is), fsynced, then renamed; a write that fails half-way leaves the
previous last.ckpt as it was. Real runs: renames are observed through Python's audit
events; a full disk is stood in for by a torch.save that writes half, then fails."""

from __future__ import annotations

import errno
import io
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from transferlab.safe_load import load_tensors
from transferlab.tracking.recorded import CHECKPOINT_TAG

BASE = ["~callbacks.early_stopping"]  # the `train` fixture drops the progress bar
_RENAMES: list[list[tuple[Path, Path]]] = []  # the recordings in progress


def _audit(event: str, args: tuple) -> None:
    """`os.rename` is the audit event of os.rename and os.replace (shutil.move too)."""
    if _RENAMES and event == "os.rename":
        _RENAMES[-1].append((Path(args[0]), Path(args[1])))


sys.addaudithook(_audit)  # for the session: an audit hook cannot be removed


@contextmanager
def renames() -> Iterator[list[tuple[Path, Path]]]:
    """(source, destination) of every rename in the process while open."""
    recorded: list[tuple[Path, Path]] = []
    _RENAMES.append(recorded)
    try:
        yield recorded
    finally:
        _RENAMES.remove(recorded)


def _last_checkpoint(runs) -> Path:
    return Path(runs()[-1].data.tags[CHECKPOINT_TAG])


def _temporary_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_checkpoints_are_renamed_into_place_from_their_own_folder_whatever_tmpdir_is(
    train, runs, tmp_path, monkeypatch
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("TMPDIR", str(elsewhere))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    assert tempfile.gettempdir() == str(elsewhere)
    with renames() as recorded:
        train(*BASE, "trainer.max_epochs=3")
    last = _last_checkpoint(runs)
    into_checkpoints = [(src, dst) for src, dst in recorded if dst.suffix == ".ckpt"]
    assert {dst.name for _, dst in into_checkpoints} == {"last.ckpt", "best.ckpt"}
    for src, dst in into_checkpoints:
        assert src.parent == dst.parent, (src, dst)  # never through TMPDIR
    assert last in {dst for _, dst in into_checkpoints}
    assert _temporary_files(last.parent) == []
    load_tensors(last, "last.ckpt")


class FailWritingAtEpoch(pl.Callback):
    """Stands in for a full disk or a crash: from epoch `epoch` on, the next checkpoint (the
    last.ckpt written as that epoch starts) gets half its bytes, then the write fails. The
    last.ckpt as it was is kept in `kept` for the test to compare."""

    def __init__(self, epoch: int, kept: str):
        self.epoch, self.kept = epoch, Path(kept)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch != self.epoch:
            return
        last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        self.kept.write_bytes(last.read_bytes())
        torch.save = _half_then_fail(torch.save)


def _half_then_fail(save):
    def half_then_fail(obj, file, *args, **kwargs):
        torch.save = save  # once
        whole = io.BytesIO()
        save(obj, whole, *args, **kwargs)
        file.write(whole.getvalue()[: len(whole.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device (a test)")

    return half_then_fail


def test_a_checkpoint_write_failing_half_way_leaves_the_previous_last_ckpt_whole(
    train, runs, tmp_path, monkeypatch
):
    monkeypatch.setattr(torch, "save", torch.save)  # put back whatever happens
    kept = tmp_path / "kept.ckpt"
    failing = f"{{_target_: {__name__}.FailWritingAtEpoch, epoch: 2, kept: '{kept}'}}"
    with pytest.raises(OSError, match="No space left"):
        train(*BASE, "trainer.max_epochs=4", f"+callbacks.fail={failing}")
    last = _last_checkpoint(runs)
    assert kept.stat().st_size > 0
    assert last.read_bytes() == kept.read_bytes()
    assert load_tensors(last, "last.ckpt")["epoch"] == 1  # written as epoch 1 started
    assert _temporary_files(last.parent) == []
