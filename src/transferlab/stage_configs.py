"""The configs of the stages a run derives from its own: the source stage it pretrains on,
and the scratch baseline it is compared with. Plain config edits: no torch here."""

from __future__ import annotations

import hashlib

from omegaconf import DictConfig, OmegaConf

from transferlab.config import CLASSICAL_HEADS
from transferlab.objective import BOOKKEEPING_KEYS


def source_config(cfg: DictConfig) -> DictConfig:
    """The run's config with the source task merged in. The source network trains whole,
    with a linear head, whatever the target's freeze strategy, head or regulariser."""
    source = _single_stage(cfg)
    source.head = {"name": "linear", "dropout": 0.0}
    _train_everything(source)
    return OmegaConf.merge(source, cfg.source)


def scratch_config(cfg: DictConfig) -> DictConfig:
    """The same model on the same target data from random weights. A neural head trains
    with the whole network; a scikit-learn head is fitted on the random network's features."""
    scratch = _single_stage(cfg)
    if cfg.head.name not in CLASSICAL_HEADS:
        _train_everything(scratch)
    scratch.regularizer = {"name": "none"}  # there is no source to stay close to
    return with_source_weights(scratch, None)


def with_source_weights(cfg: DictConfig, weights_path: str | None) -> DictConfig:
    """The config with the backbone loading `weights_path` (None: random init) instead of
    the weights it names. Only the keys the backbone config has are set: torchvision
    backbones name weights (`weights`), timm ones a flag (`pretrained`)."""
    updated = cfg.copy()
    updated.backbone.weights_path = weights_path
    if "weights" in updated.backbone:
        updated.backbone.weights = None
    if "pretrained" in updated.backbone:
        updated.backbone.pretrained = False
    return updated


def _single_stage(cfg: DictConfig) -> DictConfig:
    """A copy that runs one stage alone: no source stage, no baseline, no folds."""
    single = cfg.copy()
    single.source = {}
    single.compare_scratch = False
    single.cv.folds = None
    single.pop("optuna", None)  # only the main stage reports to an Optuna trial
    return single


def _train_everything(cfg: DictConfig) -> None:
    """Every layer trains at the same rate, unregularised: no pretrained weights to protect."""
    cfg.freeze = {"name": "none"}
    cfg.optimizer.backbone_lr_mult = 1.0
    cfg.optimizer.layer_decay = None
    cfg.regularizer = {"name": "none"}


def config_key(cfg: DictConfig) -> str:
    """Identifies what a config computes (not where it is written)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in BOOKKEEPING_KEYS:
        container.pop(key, None)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(container)).encode()).hexdigest()[:16]


def derived_choices(choices: dict[str, str], cfg: DictConfig) -> dict[str, str]:
    """The group choices of a source or scratch stage, which replace some of the run's."""
    replaced = {g: cfg[g].name for g in ("freeze", "regularizer", "head") if g in choices}
    return {**choices, **replaced}
