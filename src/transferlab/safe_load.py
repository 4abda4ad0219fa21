"""Loading weights and checkpoints that may come from outside.

`torch.load` with `weights_only=True` reads tensors and plain containers only; a file that
needs pickle (which can run any code while loading) is refused unread, naming the file. A
file that is not a whole PyTorch file (cut short by a crash or a full disk, emptied,
garbled) is one line naming it too, rather than torch's traceback from inside its reader.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from transferlab.errors import UserError

# What torch.load raises for a file that is not a whole PyTorch file: a truncated or
# corrupt zip archive (RuntimeError from its reader; OSError when cut near the end), an
# empty file (EOFError), other bytes read as the legacy format (KeyError, IndexError,
# ValueError, TypeError, BadZipFile).
DAMAGED = (
    RuntimeError,
    EOFError,
    OSError,
    KeyError,
    IndexError,
    ValueError,
    TypeError,
    zipfile.BadZipFile,
)


def load_tensors(path: str | Path, what: str, remedy: str = "") -> Any:
    """`what` names the file in the error (e.g. `backbone.weights_path=...`)."""
    with refusing_unsafe_or_damaged(what, remedy):
        return torch.load(path, map_location="cpu", weights_only=True)


@contextmanager
def refusing_unsafe_or_damaged(what: str, remedy: str = "") -> Iterator[None]:
    """Turns what a `torch.load` inside raises for a file that needs pickle, or for one that
    cannot be read, into one line naming the file as `what`."""
    suffix = f"; {remedy}" if remedy else ""
    try:
        yield
    except pickle.UnpicklingError as err:
        raise UserError(
            f"{what} needs pickle to load (it holds objects, not only tensors), which could "
            f"run code: refused{suffix}"
        ) from err
    except DAMAGED as err:
        raise UserError(f"{what} cannot be read: {_reason(err)}{suffix}") from err


def _reason(err: BaseException) -> str:
    if isinstance(err, (FileNotFoundError, IsADirectoryError, PermissionError)):
        return err.strerror or str(err)
    detail = str(err).partition(". ")[0] if isinstance(err, RuntimeError) else type(err).__name__
    return f"it is truncated, corrupt or not a PyTorch file ({detail})"
