"""Validation's first pass: the config's own keys and plain values (numbers, switches,
the task carved out of a dataset, metric names), read without importing anything heavy, so
most mistakes are answered at once. What a component accepts is its own to say: see
config_targets.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf

from transferlab.components import fraction, is_number, number, whole_number
from transferlab.config_keys import check_keys, no_missing_values, resolvable
from transferlab.errors import UserError, one_of
from transferlab.objective import SELECTIONS, TARGET_LABELLED, adaptation_node, selection_of
from transferlab.tracking.system_metrics import check_system_metrics

FIT_METRICS = ("val/acc", "val/loss", "train/acc", "train/loss", "train/reg")


METRICS = (*FIT_METRICS, "test/acc", "test/loss")


LATER_METRICS = ("time/", "model/", "inference/", "scratch/")  # logged after the fit


# With a target domain: what is logged while training (its validation split's mean entropy of
# the predictions, deep embedded validation's risk, and, with the oracle only, its accuracy
# and loss), and after it (its labelled test split; the A-distance between the domains)
TARGET_FIT_METRICS = ("target/val/entropy", "target/val/dev", "train/adapt", "source/val/acc")
TARGET_FIT_METRICS += ("source/val/loss", "target/val/acc", "target/val/loss")
TARGET_LATER_METRICS = ("target/test/", "adapt/")


PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "auto-mixed", "16-true", "bf16-true", "64-true")


# Lightning's other names (Hydra reads `trainer.precision=16` as a number)
PRECISION_ALIASES = ("transformer-engine", "transformer-engine-float16", "bf16", "16", "32", "64")


PRECISION_ALIASES += (16, 32, 64)


MAX_SEED = 2**32 - 1  # numpy's and Lightning's largest seed


# Upper bounds on sizes, far beyond any real run: a value past one is a slip (a unit, an
# exponent) that would otherwise fail mid-run, out of memory or out of processes.
MAX_BATCH_SIZE = 2**20  # images a step; even 8x8 px ones would take 0.8 GB per batch


MAX_EPOCH_SAMPLES = 2**31  # images drawn an epoch: 2 billion, hours per epoch on any machine


MAX_WORKERS = 256  # loader processes, each holding a copy of the dataset's state


DATA_DEVICES = ("auto", "cpu", "cuda")  # loader.device: where in-memory splits live (data.module)


def check_plain_values(cfg: DictConfig) -> None:
    check_keys(cfg)
    resolvable(cfg)
    no_missing_values(cfg)
    check_shared_values(cfg)
    _check_numbers(cfg)
    _check_switches(cfg)
    _check_methods(cfg)
    _check_adaptation(cfg)
    _check_metric_names(cfg)


def check_shared_values(cfg: DictConfig) -> None:
    """What a training run and a ranking (transferlab-rank, conf/rank.yaml) share: every
    number finite, the loader, the seed, the feature cache, the store, the precision, the task."""
    _check_finite(OmegaConf.to_container(cfg), "")  # unresolved: the key that was set
    _positive(cfg, "loader.batch_size", int, high=MAX_BATCH_SIZE)
    _check_workers(cfg.loader.num_workers)
    _check_data_device(
        cfg.loader.get("device", "auto"), OmegaConf.select(cfg, "trainer.accelerator")
    )
    whole_number("seed", cfg.seed, 0, MAX_SEED)
    _boolean(cfg, "feature_cache.enabled")
    if not isinstance(cfg.experiment_name, str) or not cfg.experiment_name:
        raise UserError(f"experiment_name={cfg.experiment_name!r} must be a non-empty name")
    for key in ("tracking.uri", "feature_cache.dir"):
        value = OmegaConf.select(cfg, key)
        if value is not None and not isinstance(value, str):
            raise UserError(f"{key}={value!r} must be a path or URI, or null for the default")
    precision = cfg.trainer.get("precision")
    if precision is not None and precision not in (*PRECISIONS, *PRECISION_ALIASES):
        raise UserError(f"trainer.precision={precision!r} is unknown; use {one_of(PRECISIONS)}")
    _check_task(own_node(cfg.dataset, "task"), "dataset.task")


def _check_numbers(cfg: DictConfig) -> None:
    _positive(cfg, "optimizer.lr", float)
    _positive(cfg, "trainer.max_epochs", int)
    if cfg.loader.epoch_samples is not None:
        _positive(cfg, "loader.epoch_samples", int, high=MAX_EPOCH_SAMPLES)
    whole_number("checkpoint.every_n_epochs", cfg.checkpoint.every_n_epochs, 1)
    whole_number(
        "checkpoint.every_n_train_steps", cfg.checkpoint.every_n_train_steps, 1, optional=True
    )


def _check_switches(cfg: DictConfig) -> None:
    """Booleans and the run's resumption."""
    _boolean(cfg, "compare_scratch")
    check_system_metrics(cfg.tracking.system_metrics)
    for key in ("trainer.gpu.channels_last", "trainer.gpu.compile"):  # not Lightning's
        _boolean(cfg, key, optional=True)
    if cfg.resume is not None and not isinstance(cfg.resume, (str, int)):
        raise UserError(f"resume={cfg.resume!r} must be a run id or a checkpoint path, or null")


def _check_methods(cfg: DictConfig) -> None:
    fraction("loss.label_smoothing", cfg.loss.label_smoothing)
    for key in ("augment.mixup_alpha", "augment.cutmix_alpha"):
        _positive(cfg, key, float, allow_zero=True)
    folds = cfg.cv.folds
    if folds is not None and (not isinstance(folds, int) or isinstance(folds, bool) or folds < 2):
        raise UserError(f"cv.folds={folds!r} must be a whole number >= 2, or null for no folds")
    if folds is not None and cfg.compare_scratch:
        raise UserError(
            f"cv.folds={folds} with compare_scratch=true: cross-validate the transferred and "
            "the scratch model as two runs (compare_scratch=false for the folds)"
        )


def _check_adaptation(cfg: DictConfig) -> None:
    """Adaptation needs unlabelled target images; choosing by the target needs a target."""
    adapt, target = adaptation_node(cfg), cfg.get("target_domain") or {}
    selection = adapt.get("selection", "source_val")
    if selection not in SELECTIONS:
        raise UserError(f"adapt.selection={selection!r} is unknown; use {one_of(SELECTIONS)}")
    if target.get("_target_") is not None:
        _check_task(own_node(target, "task"), "target_domain.task")
        return
    if adapt.get("_target_") is not None:
        raise UserError(
            f"adapt={adapt._target_.rpartition('.')[2]} adapts to a target domain, but there "
            "is none; add target_domain=<option> (digits, printed_digits, or your own "
            "dataset config), the unlabelled images to adapt to"
        )
    if selection != "source_val":
        raise UserError(
            f"adapt.selection={selection} reads a target domain, but there is none; add "
            "target_domain=<option>, or leave adapt.selection=source_val"
        )


def own_node(group: DictConfig, name: str) -> DictConfig:
    """transferlab's own node in a group (`dataset.task`, ...), empty where absent or not a
    node: the second pass refuses the latter, naming the node's keys."""
    node = group.get(name) if OmegaConf.is_dict(group) else None
    return node if OmegaConf.is_dict(node) else OmegaConf.create()


def _check_task(task: DictConfig, prefix: str) -> None:
    """The keys that carve a task out of any dataset (see conf/base_dataset.yaml)."""
    whole_number(f"{prefix}.train_per_class", task.get("train_per_class"), 1, optional=True)
    whole_number(f"{prefix}.split_seed", task.get("split_seed", 0), 0, MAX_SEED)
    classes = task.get("classes")
    if classes is not None and (not OmegaConf.is_list(classes) or len(classes) < 2):
        raise UserError(f"{prefix}.classes={classes!r} must list at least 2 classes, or be null")
    for key in ("val_fraction", "test_fraction", "label_noise"):
        fraction(f"{prefix}.{key}", task.get(key, 0.0))
    val, test = task.get("val_fraction", 0.0), task.get("test_fraction", 0.0)
    if val + test >= 1:
        raise UserError(
            f"{prefix}.val_fraction={val} + {prefix}.test_fraction={test} leaves no data to "
            "train on; their sum must be < 1"
        )


def _check_metric_names(cfg: DictConfig) -> None:
    """Metrics are looked up by name only once training runs, or after it."""
    metric, selection = cfg.optimize_metric, selection_of(cfg)
    fit, later = FIT_METRICS, LATER_METRICS
    if selection is not None:
        fit, later = (*fit, *TARGET_FIT_METRICS), (*later, *TARGET_LATER_METRICS)
    if metric not in (*fit, "test/acc", "test/loss") and not (
        isinstance(metric, str) and metric.startswith(later)
    ):
        raise UserError(
            f"optimize_metric={metric!r} is not logged; use {one_of(METRICS)} "
            f"(or a metric under {one_of(later)})"
        )
    _refuse_target_labels("optimize_metric", metric, selection)
    watchers = {f"callbacks.{name}": node for name, node in cfg.callbacks.items()}
    watchers["scheduler.lightning"] = own_node(cfg.scheduler, "lightning")  # Lightning's
    for key, node in {"scheduler": cfg.scheduler, **watchers}.items():
        if not OmegaConf.is_dict(node):
            continue
        monitor = node.get("monitor")
        if monitor is not None and monitor not in fit:
            raise UserError(
                f"{key}.monitor={monitor!r} is not logged while training; use {one_of(fit)}"
            )
        _refuse_target_labels(f"{key}.monitor", monitor, selection)
        if node.get("mode", "min") not in ("min", "max"):
            raise UserError(f"{key}.mode={node.mode!r} is unknown; use min or max")


def _refuse_target_labels(key: str, metric: str | None, selection: str | None) -> None:
    """Choosing a checkpoint or hyperparameters by the target's labels is what inflates
    published adaptation results: only the oracle, an upper bound, may."""
    if selection in (None, "oracle") or not str(metric).startswith(TARGET_LABELLED):
        return
    raise UserError(
        f"{key}={metric!r} reads the target domain's labels, which model selection never "
        f"sees (adapt.selection={selection}); use an unsupervised metric "
        f"({one_of(['target/val/entropy', 'target/val/dev', 'val/acc', 'val/loss'])}), or "
        "adapt.selection=oracle for the labelled upper bound"
    )


def _positive(
    cfg: DictConfig, key: str, kind: type, allow_zero: bool = False, high: int | None = None
) -> None:
    value = OmegaConf.select(cfg, key)
    number(key, value, strict=not allow_zero, high=high, whole=kind is int)


def _check_finite(node, key: str) -> None:
    """NaN passes every range check (each comparison with it is false) and inf passes the
    lower ones: refused wherever a number is read, by its full key (`optimizer.betas[1]`),
    including the options of any `_target_` and the keys of a user's own nodes."""
    if isinstance(node, dict):
        for name, value in node.items():
            _check_finite(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _check_finite(value, f"{key}[{index}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise UserError(f"{key}={node} must be a finite number")


def _check_workers(workers) -> None:
    if workers == "auto" or (is_number(workers, whole=True) and 0 <= workers <= MAX_WORKERS):
        return
    raise UserError(
        f"loader.num_workers={workers!r} must be a whole number in [0, {MAX_WORKERS}], or auto"
    )


def _check_data_device(device, accelerator) -> None:
    """Data asked onto a GPU that this machine or the trainer lacks: refused before any run
    (whether a split fits is known once it is loaded: data.module.data_device)."""
    if device not in DATA_DEVICES:
        raise UserError(f"loader.device={device!r} is unknown; use {one_of(DATA_DEVICES)}")
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "loader.device=cuda but no CUDA GPU is visible; use loader.device=auto (the GPU "
            "where there is one) or loader.device=cpu"
        )
    if accelerator not in (None, "auto", "gpu", "cuda"):
        raise UserError(
            f"loader.device=cuda keeps the data on the GPU, but trainer.accelerator={accelerator} "
            "trains elsewhere; use trainer=gpu, or loader.device=auto"
        )


def _boolean(cfg: DictConfig, key: str, optional: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, bool) and not (optional and value is None):
        raise UserError(f"{key}={value!r} must be true or false")
