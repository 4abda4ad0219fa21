"""A run's data as MLflow dataset inputs: each split of the dataset (and of the target
domain, where the run adapts to one) is logged with its context, a source and a digest, so
that the run page's Datasets section and the runs list's Dataset column say what it trained
and was tested on, and runs on the same images show the same digest.

- The context (input tag mlflow.data.context): `training`, `validation`, `test`; a target
  domain's splits `target-training`, `target-validation`, `target-test`.
- The source: where the dataset names a root folder (image folders, torchvision's CIFAR),
  that folder as a local source, which MLflow's UI shows as its path; otherwise (scikit-learn's
  digits, printed_digits, synthetic, a user's class) the code that makes it: its `_target_`.
- The digest: TransferDataModule.split_digest (the dataset's identity, an image folder's
  manifest digest included, and the task fields and fold that carve that split); the
  profile: the split's image and class counts.

The run also keeps its tag transferlab.dataset_digest: the data, task and fold as a whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from transferlab.data.module import TransferDataModule

DIGEST_TAG = "transferlab.dataset_digest"
CONTEXTS = {"train": "training", "val": "validation", "test": "test"}
TARGET = "target-"  # before a target domain split's context


def dataset_records(data: TransferDataModule) -> list[dict[str, str]]:
    """Each split as one plain record, all strings (mlflow_run.DATASET_FIELDS): what TrackedRun
    sends as MLflow's entities, or keeps in an unsent file."""
    domains = [(data.identity, data.source_config, data.splits, False)]
    if data.target is not None:
        domains.append((data.identity["target"], data.target_config, data.target, True))
    return [
        {
            **_source(identity["source"], config["_target_"]),
            "digest": data.split_digest(split, target),
            "profile": json.dumps(_profile(getattr(splits, split).targets)),
            "context": (TARGET if target else "") + context,
        }
        for identity, config, splits, target in domains
        for split, context in CONTEXTS.items()
    ]


def _source(identity: Any, target: str) -> dict[str, str]:
    """The dataset's name and where it comes from, from its identity() (any JSON data)."""
    found = identity if isinstance(identity, dict) else {}
    name = str(found.get("name") or target.rpartition(".")[2])
    if "root" not in found:
        where = {"tags": {"mlflow.source.name": target}}
        return {"name": name, "source_type": "code", "source": json.dumps(where)}
    if name == "image_folder":  # the folder's own name says which images these are
        name = Path(found["root"]).name
    return {"name": name, "source_type": "local", "source": json.dumps({"uri": found["root"]})}


def _profile(targets: np.ndarray) -> dict[str, int]:
    return {"num_examples": len(targets), "num_classes": len(np.unique(targets))}
