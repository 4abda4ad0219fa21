"""Features of a frozen backbone, computed once and cached on disk.

A linear probe or a scikit-learn head on a fully frozen backbone only ever sees the
backbone's output, so running the backbone once per split is enough: every later trial
(in this process, in another one, in another sweep job) reads the cached tensors instead.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from transferlab.atomic import write_atomically
from transferlab.errors import UserError, one_of
from transferlab.inference import AUTOCAST_DTYPES, autocast, eval_mode
from transferlab.safe_load import load_tensors

# Bump when what is stored, or how it is computed, changes: old entries then stop matching.
CACHE_FORMAT = 1
FULL_PRECISION = ("32-true", "32")


def extract_features(
    backbone: nn.Module, dataset: Dataset, batch_size: int, precision: str = "32-true"
) -> tuple[Tensor, Tensor]:
    """Runs `dataset` (e.g. `splits.train.dataset`, yielding (image, label)) through the
    backbone in eval mode: float32 features (N, D) and int64 labels (N,), both on the CPU.

    `precision` is Lightning's: 32-true, bf16-mixed or 16-mixed (autocast on the
    backbone's device). 16-mixed on a CPU is refused, as Lightning's Trainer refuses it,
    rather than silently run as bf16. The backbone's train/eval modes are restored after.
    """
    device = next(backbone.parameters()).device
    mixed = _checked_autocast(precision, device)
    features, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=0)
    with eval_mode(backbone), torch.inference_mode(), mixed:
        for images, targets in loader:
            features.append(backbone(images.to(device, non_blocking=True)).float().cpu())
            labels.append(torch.as_tensor(targets, dtype=torch.int64))
    return torch.cat(features), torch.cat(labels)


def _checked_autocast(precision: str, device: torch.device) -> AbstractContextManager:
    if precision in FULL_PRECISION:
        return nullcontext()
    if precision not in AUTOCAST_DTYPES:
        accepted = [*FULL_PRECISION[:1], *AUTOCAST_DTYPES]
        raise UserError(
            f"trainer.precision={precision!r} cannot extract features; use {one_of(accepted)}"
        )
    if precision == "16-mixed" and device.type == "cpu":
        raise UserError(
            "trainer.precision='16-mixed' is not supported on a CPU (fp16 AMP is GPU-only "
            "in Lightning); use bf16-mixed or 32-true"
        )
    return autocast(precision, device)


class FeatureCache:
    """(features, labels) per key in `directory`: `<sha256>.pt`, with `<sha256>.json`
    holding the key for humans. Files are written atomically (temp file + os.replace),
    so workers sharing the directory never read a half-written entry; two workers that
    miss at once both compute and the last write wins, with the same content. A directory
    the cache creates is private to the user (0700): the features reveal the data.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def features(
        self,
        key: Mapping[str, Any],
        compute: Callable[[], tuple[Tensor, Tensor]],
        labels: np.ndarray | Tensor,
    ) -> tuple[Tensor, Tensor]:
        """The cached tensors for `key`, or `compute()`'s, stored for next time.

        `key` is plain JSON data holding everything the features depend on; `labels` are
        the split's, in order: an entry that does not hold one feature row per label, and
        those labels, is unusable (as is one that cannot be read): it is deleted and
        computed again, with a warning.
        """
        digest = key_digest(key)
        path = self.directory / f"{digest}.pt"
        if path.is_file():
            cached = self._read(path, torch.as_tensor(labels, dtype=torch.int64))
            if cached is not None:
                self.hits += 1
                return cached
        self.misses += 1
        features, found = compute()
        description = json.dumps(_versioned(key), indent=2, sort_keys=True).encode()
        write_atomically(self.directory / f"{digest}.json", lambda f: f.write(description))
        stored = {"features": features, "labels": found}
        write_atomically(path, lambda f: torch.save(stored, f))
        return features, found

    def _read(self, path: Path, labels: Tensor) -> tuple[Tensor, Tensor] | None:
        """The entry's tensors, or None (entry deleted, one warning) when it is unusable."""
        what = f"feature cache entry {path}"
        try:
            stored = load_tensors(path, what)
        except UserError as err:  # cut short, emptied, garbled, or needing pickle
            problem = str(err)
        else:
            fit = _entry_problem(stored, labels)
            problem = f"{what} does not fit the split: {fit}" if fit else None
        if problem is None:
            return stored["features"], stored["labels"]
        warnings.warn(f"{problem}; recomputing it", stacklevel=3)
        path.unlink(missing_ok=True)
        return None


def _entry_problem(stored: Any, labels: Tensor) -> str | None:
    """What makes a loaded entry unfit for a split with these `labels`; None: nothing."""
    if not isinstance(stored, dict) or set(stored) != {"features", "labels"}:
        return "it does not hold exactly features and labels"
    features, found = stored["features"], stored["labels"]
    if not (isinstance(features, Tensor) and features.ndim == 2 and features.is_floating_point()):
        return "its features are not a 2-D float tensor"
    if not (isinstance(found, Tensor) and found.ndim == 1 and found.dtype == torch.int64):
        return "its labels are not a 1-D int64 tensor"
    if not len(features) == len(found) == len(labels):
        return (
            f"it holds {len(features)} feature rows and {len(found)} labels for a split of "
            f"{len(labels)} images"
        )
    if not torch.equal(found, labels):
        return "its labels differ from the split's"
    return None


def key_digest(key: Mapping[str, Any]) -> str:
    """sha256 of the key's canonical JSON (sorted keys, no spaces): equal keys, equal names.

    A value that is not plain JSON (a Path, a DictConfig) raises TypeError: convert it
    first (str, OmegaConf.to_container), as its repr would not be stable across runs.
    """
    return json_digest(_versioned(key))


def json_digest(value: Any) -> str:
    """sha256 (hex) of plain JSON data in canonical form (sorted keys, no spaces)."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _versioned(key: Mapping[str, Any]) -> dict[str, Any]:
    return {"cache_format": CACHE_FORMAT, "key": dict(key)}


def weights_identity(backbone: nn.Module) -> str:
    """What the weights are, whatever their origin (a torchvision name, a local file, an
    MLflow URI, a seeded random init): a sha256 of the tensors themselves, so any change
    to them misses the cache and the same weights from another path hit it."""
    digest = hashlib.sha256()
    for name, tensor in backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"
