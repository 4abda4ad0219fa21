"""Loading weights and checkpoints that may come from outside.

`torch.load` with `weights_only=True` reads tensors and plain containers only; a file that
needs pickle (which can run any code while loading) is refused unread, naming the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from transferlab.errors import UserError


def load_tensors(path: str | Path, what: str, remedy: str = "") -> Any:
    """`what` names the file in the error (e.g. `backbone.weights_path=...`)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"{what} needs pickle to load (it holds objects, not only tensors), which could "
            f"run code: refused{'; ' + remedy if remedy else ''}"
        ) from err
