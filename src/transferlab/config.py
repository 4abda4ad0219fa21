"""Checks a composed config before anything heavy is imported or any run is started.

Every check raises a UserError that names the key, the bad value and what is accepted.
Checks that need a built model or the data (stage counts, weight files, dataset folders)
happen where those are built, still before training.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from transferlab.errors import UserError
from transferlab.finetune.freezing import check_fits_training, check_freeze_config

CLASSICAL_HEADS = ("svm", "logreg")  # scikit-learn heads: fitted on frozen features


def validate(cfg: DictConfig) -> None:
    _no_missing_values(cfg)
    _positive(cfg, "optimizer.lr", float)
    _positive(cfg, "loader.batch_size", int)
    _positive(cfg, "trainer.max_epochs", int)
    _check_workers(cfg.loader.num_workers)
    if cfg.loader.get("epoch_samples") is not None:
        _positive(cfg, "loader.epoch_samples", int)
    _positive(cfg, "optimizer.backbone_lr_mult", float, allow_zero=True)
    for key in ("trainer.channels_last", "trainer.compile"):  # transferlab's, not Lightning's
        _boolean_if_set(cfg, key)
    freeze = OmegaConf.to_container(cfg.freeze)
    check_freeze_config(freeze)
    check_fits_training(freeze, cfg.trainer.max_epochs)
    _check_methods(cfg)
    _check_task(cfg.dataset, "dataset")
    if cfg.get("source"):
        _check_task(OmegaConf.merge(cfg.dataset, cfg.source.get("dataset", {})), "source.dataset")
    if "dropout" in cfg.head:
        _positive(cfg, "head.dropout", float, allow_zero=True)
        if cfg.head.dropout >= 1:
            raise UserError(f"head.dropout={cfg.head.dropout} must be in [0, 1)")


def _check_methods(cfg: DictConfig) -> None:
    decay = cfg.optimizer.get("layer_decay")
    if decay is not None and (not isinstance(decay, (int, float)) or not 0 < decay <= 1):
        raise UserError(f"optimizer.layer_decay={decay!r} must be in (0, 1], or null for none")
    smoothing = cfg.loss.label_smoothing
    if not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 1:
        raise UserError(f"loss.label_smoothing={smoothing!r} must be in [0, 1)")
    for key in ("augment.mixup_alpha", "augment.cutmix_alpha"):
        _positive(cfg, key, float, allow_zero=True)
    if cfg.head.name in CLASSICAL_HEADS and cfg.freeze.name != "linear_probe":
        raise UserError(
            f"head={cfg.head.name} is fitted on frozen features, but freeze={cfg.freeze.name} "
            "trains the backbone; use freeze=linear_probe or a neural head (linear, mlp)"
        )
    folds = cfg.cv.folds
    if folds is not None and (not isinstance(folds, int) or isinstance(folds, bool) or folds < 2):
        raise UserError(f"cv.folds={folds!r} must be a whole number >= 2, or null for no folds")
    if folds is not None and cfg.compare_scratch:
        raise UserError(
            f"cv.folds={folds} with compare_scratch=true: cross-validate the transferred and "
            "the scratch model as two runs (compare_scratch=false for the folds)"
        )


def _no_missing_values(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        example = "/path/to/images" if missing[0].endswith("root") else "VALUE"
        raise UserError(f"{missing[0]} is required: pass {missing[0]}={example}")


def _number(cfg: DictConfig, key: str, kind: type):
    value = OmegaConf.select(cfg, key)
    is_bool = isinstance(value, bool)
    if is_bool or not isinstance(value, (int, float) if kind is float else int):
        raise UserError(
            f"{key}={value!r} must be a {'number' if kind is float else 'whole number'}"
        )
    return value


def _positive(cfg: DictConfig, key: str, kind: type, allow_zero: bool = False) -> None:
    value = _number(cfg, key, kind)
    if value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"{key}={value} must be {'>= 0' if allow_zero else '> 0'}")


def _check_workers(workers) -> None:
    whole = isinstance(workers, int) and not isinstance(workers, bool)
    if workers == "auto" or (whole and workers >= 0):
        return
    raise UserError(f"loader.num_workers={workers!r} must be a whole number >= 0, or auto")


def _boolean_if_set(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if value is not None and not isinstance(value, bool):
        raise UserError(f"{key}={value!r} must be true or false")


def _check_task(dataset: DictConfig, prefix: str) -> None:
    """The keys that carve a task out of any dataset (see conf/dataset/digits.yaml)."""
    per_class = dataset.get("train_per_class")
    if per_class is not None and (not isinstance(per_class, int) or per_class < 1):
        raise UserError(f"{prefix}.train_per_class={per_class!r} must be a whole number >= 1")
    classes = dataset.get("classes")
    if classes is not None and (not OmegaConf.is_list(classes) or len(classes) < 2):
        raise UserError(f"{prefix}.classes={classes!r} must list at least 2 classes, or be null")
    for key in ("val_fraction", "test_fraction"):
        value = dataset.get(key, 0.0)
        if not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise UserError(f"{prefix}.{key}={value!r} must be in [0, 1)")
    if dataset.get("val_fraction", 0.0) + dataset.get("test_fraction", 0.0) >= 1:
        raise UserError(f"{prefix}.val_fraction + test_fraction must leave data to train on (< 1)")
