"""Training on a frozen backbone's cached features: the linear-probe fast path and the
scikit-learn heads ("CNN features + SVM").

When no backbone stage ever trains and the inputs are deterministic, the backbone's output
for each split never changes: it is computed once, cached on disk keyed by everything that
determines it, and read back by every later run and sweep trial.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from transferlab.components import ClassicalHead, build
from transferlab.data.feature_cache import FeatureCache, extract_features, weights_identity
from transferlab.data.module import TransferDataModule
from transferlab.models.backbone import Backbone
from transferlab.models.classical_heads import evaluate, save
from transferlab.objective import selection_of
from transferlab.tracking.artifacts import write_test_artifacts
from transferlab.tracking.mlflow_run import TrackedRun

SPLITS = ("train", "val", "test")
SplitFeatures = dict[str, tuple[Tensor, Tensor]]


class FeaturesAsInput(nn.Module):
    """Stands in for a frozen backbone whose features were computed beforehand: its input
    already is the features. No stages, no parameters; the source classifier is kept."""

    num_stages = 0
    base_sha256 = None  # no adapter: what Backbone.base_sha256 says of an unadapted network

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.network = nn.Identity()
        self.source_head = backbone.source_head
        self.feature_dim = backbone.feature_dim

    def forward(self, features: Tensor) -> Tensor:
        return features


def can_cache_features(cfg: DictConfig, backbone: Backbone) -> bool:
    """The cache is on, the backbone never trains, nothing random touches the images and
    there is no target domain (whose batches the cache does not hold). (With the cache off,
    a neural head trains with the backbone in the loop, as usual.)"""
    if selection_of(cfg) is not None:
        return False
    mixing = cfg.augment.mixup_alpha > 0 or cfg.augment.cutmix_alpha > 0
    freeze = build(cfg.freeze, "freeze")
    frozen = freeze.is_always_frozen(backbone.num_stages, cfg.trainer.max_epochs)
    return cfg.feature_cache.enabled and frozen and not mixing


def split_features(
    cfg: DictConfig,
    backbone: Backbone,
    data: TransferDataModule,
    precision: str,
    splits: Iterable[str] = SPLITS,
) -> SplitFeatures:
    """Each split's features, from the cache when an earlier run computed them. The data
    is keyed by what was loaded (`data.identity`: for an image folder its absolute root and
    a digest of its files, with the task and the fold), not by the dataset's config.
    `splits`: those wanted (a ranking reads the train split only)."""
    cache = FeatureCache(cache_dir(cfg)) if cfg.feature_cache.enabled else None
    identity = {
        "weights": weights_identity(backbone.network),
        "arch": backbone.name,
        "preprocessing": backbone.preprocessing.as_dict(),
        "data": data.identity,
        "precision": precision,
        "versions": {p: version(p) for p in ("torch", "torchvision")},
    }
    features = {}
    for split in splits:
        part = getattr(data.splits, split)

        def compute(images=part.dataset):
            with on_training_device(backbone, cfg.trainer.accelerator):
                return extract_features(backbone, images, cfg.loader.batch_size, precision)

        key = {**identity, "split": split}
        features[split] = cache.features(key, compute, part.targets) if cache else compute()
    return features


@contextmanager
def on_training_device(backbone: Backbone, accelerator: str) -> Iterator[None]:
    """The backbone on the GPU the run trains on while it extracts features (it is built on
    the CPU, before any Trainer exists), and back on the CPU after, where the Trainer
    expects to find it. Under DDP, each process on its own GPU (LOCAL_RANK)."""
    if accelerator not in ("gpu", "cuda", "auto") or not torch.cuda.is_available():
        yield
        return
    backbone.to(torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))))
    try:
        yield
    finally:
        backbone.to("cpu")


def cache_dir(cfg: DictConfig) -> Path:
    configured = cfg.feature_cache.dir or os.environ.get("TRANSFERLAB_CACHE")
    return Path(configured or Path.home() / ".cache" / "transferlab" / "features")


def fit_classical_head(
    cfg: DictConfig,
    run: TrackedRun,
    features: SplitFeatures,
    class_names: list[str],
    stage_dir: Path,
) -> dict[str, float]:
    """Fits the scikit-learn head on the train features and scores every split under the
    metric names of a neural head; the fitted model and test plots become artifacts."""
    head: ClassicalHead = build(cfg.head, "head")
    estimator = head.estimator()
    train_x, train_y = features["train"]
    estimator.fit(train_x.numpy(), train_y.numpy())
    metrics = {}
    for split in SPLITS:
        x, y = features[split]
        for name, value in evaluate(estimator, x.numpy(), y.numpy(), len(class_names)).items():
            metrics[f"{split}/{name}"] = value
    run.log_metrics(metrics)
    test_x, test_y = features["test"]
    predictions = estimator.predict(test_x.numpy())
    stage_dir.mkdir(parents=True, exist_ok=True)
    for path in write_test_artifacts(
        predictions, np.asarray(test_y), class_names, stage_dir / "test"
    ):
        run.log_artifact(path, "test")
    run.log_artifact(save(estimator, stage_dir / type(head).__name__), "model")  # SVMHead.skops
    return metrics
