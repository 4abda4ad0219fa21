"""Checks a composed config before any run is started: the one place where bad input is
caught. Every check raises a UserError that names the key, the bad value and what is
accepted.

Two passes. The first reads plain values and imports nothing heavy, so most mistakes are
answered at once. The second asks the code what it accepts (the registries of backbones,
heads and regularisers, the parameters of each `_target_`, torch's own checks of optimizer
and scheduler options); it imports torch and Lightning, which a valid config imports right
after anyway. Checks that need a built model or the data (stage counts, weight files,
dataset folders) happen where those are built, still before training.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from transferlab.errors import UserError, one_of
from transferlab.finetune.freezing import check_fits_training, check_freeze_config
from transferlab.objective import CLASSICAL_HEADS
from transferlab.stage_configs import derived_stages

OVERLAYS = ("scratch",)  # keys merged onto a derived stage's config, checked there
ADDED_BY_SWEEPERS = ("optuna",)  # an Optuna trial's study and number
FIT_METRICS = ("val/acc", "val/loss", "train/acc", "train/loss", "train/reg")
METRICS = (*FIT_METRICS, "test/acc", "test/loss")
LATER_METRICS = ("time/", "model/", "inference/", "scratch/")  # logged after the fit
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "auto-mixed", "16-true", "bf16-true", "64-true")
# Lightning's other names (Hydra reads `trainer.precision=16` as a number)
PRECISION_ALIASES = ("transformer-engine", "transformer-engine-float16", "bf16", "16", "32", "64")
PRECISION_ALIASES += (16, 32, 64)
MAX_SEED = 2**32 - 1  # numpy's and Lightning's largest seed
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
# What torch raises for options it refuses (Hydra wraps errors in the call it makes)
REFUSED = (InstantiationException, TypeError, ValueError, RuntimeError)


def validate(cfg: DictConfig) -> None:
    """Raises a UserError for the first bad key; the cheap checks come first. The stages the
    run derives (its source stage, its scratch baseline) pass the same checks, before any
    run starts, as `source.*` / `scratch.*` merged onto the run's config."""
    _check_plain_values(cfg)
    stages = derived_stages(cfg)
    for role, stage in stages.items():
        _in_stage(role, _check_plain_values, stage)
    _check_against_code(cfg)
    for role, stage in stages.items():
        _in_stage(role, _check_against_code, stage)
    _open_store(cfg.tracking.uri)  # once: the derived stages record to the same store


def _in_stage(role: str, check: Callable[[DictConfig], None], stage: DictConfig) -> None:
    try:
        check(stage)
    except UserError as error:
        raise UserError(f"{role} stage (the config with {role}.* merged in): {error}") from None


# --- first pass: plain values, nothing heavy imported ---------------------------------------


def _check_plain_values(cfg: DictConfig) -> None:
    _check_keys(cfg)
    _resolvable(cfg)
    _no_missing_values(cfg)
    _check_numbers(cfg)
    _check_switches(cfg)
    freeze = OmegaConf.to_container(cfg.freeze)
    check_freeze_config(freeze)
    check_fits_training(freeze, cfg.trainer.max_epochs)
    _check_methods(cfg)
    _check_regularizer(cfg)
    _check_task(cfg.dataset, "dataset")
    _check_metric_names(cfg)


@dataclass(frozen=True)
class Schema:
    top_level: tuple[str, ...]  # groups, sections and settings
    sections: dict[str, tuple[str, ...]]  # plain sections (no group, no `_target_`): their keys


@functools.cache
def schema() -> Schema:
    """The keys conf/train.yaml defines: Hydra takes any `+key=value`, so a misspelt key
    would otherwise be ignored without a word. Read from the file, which stays the one
    place a key is added."""
    text = resources.files("transferlab.conf").joinpath("train.yaml").read_text()
    primary = OmegaConf.to_container(OmegaConf.create(text))  # unresolved: ${hydra:...}
    groups = [next(iter(entry)) for entry in primary["defaults"] if isinstance(entry, dict)]
    own = [key for key in primary if key not in ("defaults", "hydra")]
    plain = [key for key in own if isinstance(primary[key], dict) and key not in OVERLAYS]
    sections = {key: tuple(primary[key]) for key in plain}
    return Schema((*groups, *own), sections)


def _check_keys(cfg: DictConfig) -> None:
    known = schema()
    _known_keys(cfg, "", known.top_level, "the config", known.top_level, ADDED_BY_SWEEPERS)
    for section, keys in known.sections.items():
        if not OmegaConf.is_dict(cfg[section]):
            raise UserError(f"{section}={cfg[section]!r} must hold keys: {one_of(keys)}")
        _known_keys(cfg[section], f"{section}.", keys, section, required=keys)


def _known_keys(
    node: DictConfig,
    prefix: str,
    accepted: Iterable[str],
    owner: str,
    required: Iterable[str] = (),
    implied: Iterable[str] = HYDRA_KEYS,
) -> None:
    """`implied` keys are taken but not worth listing (Hydra's own, a group's `name`)."""
    accepted = [*accepted]
    for key in node:
        if key not in accepted and key not in implied:
            raise _unknown(f"{prefix}{key}", accepted, owner)
    for key in required:
        if key not in node:
            raise UserError(f"{prefix}{key} is required: set it rather than delete it")


def _unknown(key: str, accepted: list[str], owner: str) -> UserError:
    """Names a close match first: most unknown keys are typos."""
    close = difflib.get_close_matches(key.rpartition(".")[2], accepted, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    takes = one_of(accepted) if accepted else "no options"
    return UserError(f"{key} is unknown{hint}; {owner} takes {takes}")


def _no_missing_values(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        example = "/path/to/images" if missing[0].endswith("root") else "VALUE"
        raise UserError(f"{missing[0]} is required: pass {missing[0]}={example}")


def _resolvable(cfg: DictConfig) -> None:
    """A `${...}` pointing nowhere would otherwise fail wherever it is first read."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as err:
        reason = str(err).partition("\n")[0]
        raise UserError(f"{err.full_key} cannot be resolved: {reason}") from None


# Upper bounds on sizes, far beyond any real run: a value past one is a slip (a unit, an
# exponent) that would otherwise fail mid-run, out of memory or out of processes.
MAX_BATCH_SIZE = 2**20  # images a step; even 8x8 px ones would take 0.8 GB per batch
MAX_EPOCH_SAMPLES = 2**31  # images drawn an epoch: 2 billion, hours per epoch on any machine
MAX_INPUT_SIZE = 4096  # px a side; backbones are pretrained at <= 1024, a 4096 image is 200 MB
MAX_WORKERS = 256  # loader processes, each holding a copy of the dataset's state
MAX_HIDDEN = 2**16  # head width; 65536 x a 2048-wide backbone is already 134M weights


def _check_numbers(cfg: DictConfig) -> None:
    _check_finite(OmegaConf.to_container(cfg), "")  # unresolved: the key that was set
    _positive(cfg, "optimizer.lr", float)
    _positive(cfg, "loader.batch_size", int, high=MAX_BATCH_SIZE)
    _positive(cfg, "trainer.max_epochs", int)
    _check_workers(cfg.loader.num_workers)
    if cfg.loader.epoch_samples is not None:
        _positive(cfg, "loader.epoch_samples", int, high=MAX_EPOCH_SAMPLES)
    _positive(cfg, "optimizer.backbone_lr_mult", float, allow_zero=True)
    for key in ("weight_decay", "momentum"):  # torch would refuse them without naming the key
        if key in cfg.optimizer:
            _positive(cfg, f"optimizer.{key}", float, allow_zero=True)
    for key in ("step_size", "T_max"):  # torch would divide by them at the end of an epoch
        if key in cfg.scheduler:
            _whole(f"scheduler.{key}", cfg.scheduler[key], 1)
    _whole("seed", cfg.seed, 0, MAX_SEED)
    _whole("backbone.input_size", cfg.backbone.get("input_size"), 8, MAX_INPUT_SIZE, optional=True)
    if "hidden" in cfg.head:
        _whole("head.hidden", cfg.head.hidden, 1, MAX_HIDDEN)
    if "max_iter" in cfg.head:
        _whole("head.max_iter", cfg.head.max_iter, 1)
    if "C" in cfg.head:
        _positive(cfg, "head.C", float)
    _whole("checkpoint.every_n_epochs", cfg.checkpoint.every_n_epochs, 1)
    _whole("checkpoint.every_n_train_steps", cfg.checkpoint.every_n_train_steps, 1, optional=True)
    if "dropout" in cfg.head:
        _positive(cfg, "head.dropout", float, allow_zero=True)
        if cfg.head.dropout >= 1:
            raise UserError(f"head.dropout={cfg.head.dropout} must be in [0, 1)")


def _check_switches(cfg: DictConfig) -> None:
    """Booleans, names and the trainer's precision."""
    for key in ("compare_scratch", "feature_cache.enabled"):
        _boolean(cfg, key)
    for key in ("trainer.channels_last", "trainer.compile"):  # transferlab's, not Lightning's
        _boolean(cfg, key, optional=True)
    if not isinstance(cfg.experiment_name, str) or not cfg.experiment_name:
        raise UserError(f"experiment_name={cfg.experiment_name!r} must be a non-empty name")
    for key in ("tracking.uri", "feature_cache.dir"):
        value = OmegaConf.select(cfg, key)
        if value is not None and not isinstance(value, str):
            raise UserError(f"{key}={value!r} must be a path or URI, or null for the default")
    if cfg.resume is not None and not isinstance(cfg.resume, (str, int)):
        raise UserError(f"resume={cfg.resume!r} must be a run id or a checkpoint path, or null")
    precision = cfg.trainer.get("precision")
    if precision is not None and precision not in (*PRECISIONS, *PRECISION_ALIASES):
        raise UserError(f"trainer.precision={precision!r} is unknown; use {one_of(PRECISIONS)}")


def _check_methods(cfg: DictConfig) -> None:
    decay = cfg.optimizer.get("layer_decay")
    if decay is not None and (not isinstance(decay, (int, float)) or not 0 < decay <= 1):
        raise UserError(f"optimizer.layer_decay={decay!r} must be in (0, 1], or null for none")
    smoothing = cfg.loss.label_smoothing
    if not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 1:
        raise UserError(f"loss.label_smoothing={smoothing!r} must be in [0, 1)")
    for key in ("augment.mixup_alpha", "augment.cutmix_alpha"):
        _positive(cfg, key, float, allow_zero=True)
    head = cfg.head.get("name")
    if head in CLASSICAL_HEADS and cfg.freeze.name != "linear_probe":
        raise UserError(
            f"head={head} is fitted on frozen features, but freeze={cfg.freeze.name} "
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


def _check_regularizer(cfg: DictConfig) -> None:
    node = cfg.regularizer
    for key in ("weight", "alpha", "beta"):
        if key in node:
            _positive(cfg, f"regularizer.{key}", float, allow_zero=True)
    if "temperature" in node:
        _positive(cfg, "regularizer.temperature", float)
    name, head = node.get("name"), cfg.head.get("name")
    if name != "none" and head in CLASSICAL_HEADS:
        raise UserError(
            f"regularizer={name} keeps a trained network near the source, but head={head} "
            "trains none; use regularizer=none or a neural head (linear, mlp)"
        )


def _check_task(dataset: DictConfig, prefix: str) -> None:
    """The keys that carve a task out of any dataset (see conf/dataset/digits.yaml)."""
    _whole(f"{prefix}.train_per_class", dataset.get("train_per_class"), 1, optional=True)
    _whole(f"{prefix}.split_seed", dataset.get("split_seed", 0), 0, MAX_SEED)
    classes = dataset.get("classes")
    if classes is not None and (not OmegaConf.is_list(classes) or len(classes) < 2):
        raise UserError(f"{prefix}.classes={classes!r} must list at least 2 classes, or be null")
    for key in ("val_fraction", "test_fraction"):
        value = dataset.get(key, 0.0)
        if not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise UserError(f"{prefix}.{key}={value!r} must be in [0, 1)")
    val, test = dataset.get("val_fraction", 0.0), dataset.get("test_fraction", 0.0)
    if val + test >= 1:
        raise UserError(
            f"{prefix}.val_fraction={val} + {prefix}.test_fraction={test} leaves no data to "
            "train on; their sum must be < 1"
        )


def _check_metric_names(cfg: DictConfig) -> None:
    """Metrics are looked up by name only once training runs, or after it."""
    metric = cfg.optimize_metric
    if metric not in METRICS and not (isinstance(metric, str) and metric.startswith(LATER_METRICS)):
        raise UserError(
            f"optimize_metric={metric!r} is not logged; use {one_of(METRICS)} "
            f"(or a metric under {one_of(LATER_METRICS)})"
        )
    watchers = {f"callbacks.{name}": node for name, node in cfg.callbacks.items()}
    for key, node in {"scheduler": cfg.scheduler, **watchers}.items():
        if not OmegaConf.is_dict(node):
            continue
        monitor = node.get("monitor")
        if monitor is not None and monitor not in FIT_METRICS:
            raise UserError(
                f"{key}.monitor={monitor!r} is not logged while training; use {one_of(FIT_METRICS)}"
            )
        if node.get("mode", "min") not in ("min", "max"):
            raise UserError(f"{key}.mode={node.mode!r} is unknown; use min or max")


def _number(cfg: DictConfig, key: str, kind: type):
    value = OmegaConf.select(cfg, key)
    is_bool = isinstance(value, bool)
    if is_bool or not isinstance(value, (int, float) if kind is float else int):
        raise UserError(
            f"{key}={value!r} must be a {'number' if kind is float else 'whole number'}"
        )
    return value


def _positive(
    cfg: DictConfig, key: str, kind: type, allow_zero: bool = False, high: int | None = None
) -> None:
    value = _number(cfg, key, kind)
    if value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"{key}={value} must be {'>= 0' if allow_zero else '> 0'}")
    if high is not None and value > high:
        raise UserError(f"{key}={value} must be <= {high}")


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


def _whole(key: str, value, low: int, high: int | None = None, optional: bool = False) -> None:
    """Counts, sizes and seeds."""
    if value is None and optional:
        return
    whole = isinstance(value, int) and not isinstance(value, bool)
    if not whole or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise UserError(
            f"{key}={value!r} must be a whole number {bound}{', or null' if optional else ''}"
        )


def _check_workers(workers) -> None:
    whole = isinstance(workers, int) and not isinstance(workers, bool)
    if workers == "auto" or (whole and 0 <= workers <= MAX_WORKERS):
        return
    raise UserError(
        f"loader.num_workers={workers!r} must be a whole number in [0, {MAX_WORKERS}], or auto"
    )


def _boolean(cfg: DictConfig, key: str, optional: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, bool) and not (optional and value is None):
        raise UserError(f"{key}={value!r} must be true or false")


# --- second pass: what the code accepts (imports torch and Lightning) -----------------------


def _check_against_code(cfg: DictConfig) -> None:
    _check_targets(cfg)
    _check_registries(cfg)
    _check_lightning_names(cfg.trainer)
    check_accelerator(cfg.trainer.accelerator)
    _try_optimizer_and_scheduler(cfg)


def check_accelerator(accelerator: str) -> None:
    """Also where a recorded config is run again (resume): the machine may have changed."""
    import torch

    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible; use trainer=cpu"
        )


def _check_targets(cfg: DictConfig) -> None:
    """Hydra passes every key of a node to its `_target_`: a key the target does not take
    would only fail when it is called, mid-run."""
    from transferlab.data.splits import TASK_KEYS
    from transferlab.finetune.optim import OWN_OPTIMIZER_KEYS, OWN_SCHEDULER_KEYS
    from transferlab.gpu_options import OPTION_KEYS

    _check_target(cfg.backbone, "backbone")
    _check_target(cfg.dataset, "dataset", own=sorted(TASK_KEYS))
    _check_target(cfg.optimizer, "optimizer", filled=("params",), own=OWN_OPTIMIZER_KEYS)
    _check_target(cfg.scheduler, "scheduler", filled=("optimizer",), own=OWN_SCHEDULER_KEYS)
    _check_target(cfg.trainer, "trainer", own=OPTION_KEYS)
    for name, callback in cfg.callbacks.items():
        if callback is None:
            continue  # turned off
        if not OmegaConf.is_dict(callback) or "_target_" not in callback:
            raise UserError(
                f"callbacks.{name}={callback!r} must be a callback config with a _target_, "
                "or null to turn it off"
            )
        _check_target(callback, f"callbacks.{name}")


def _check_target(
    node: DictConfig, key: str, filled: Iterable[str] = (), own: Iterable[str] = ()
) -> None:
    path = node.get("_target_")
    if path is None:  # scheduler=none: a constant learning rate
        _known_keys(node, f"{key}.", (), f"{key} without a _target_")
        return
    _check_options(node, key, _locate(path, key), path, filled, own)


def _check_options(
    node: DictConfig,
    key: str,
    fn: Callable,
    owner: str,
    filled: Iterable[str] = (),
    own: Iterable[str] = (),
    implied: Iterable[str] = HYDRA_KEYS,
) -> None:
    """The keys must be parameters of `fn` (or `own` keys, read by transferlab), each of
    the type of its default where that is a number or a boolean: the signature is the
    schema. A value the callable cannot take would otherwise fail mid-run."""
    parameters = _parameters(fn, filled)
    if parameters is None:
        return
    _known_keys(node, f"{key}.", [*parameters, *own], owner, implied=implied)
    for name, default in parameters.items():
        value = node.get(name)
        if value is None:
            continue
        if isinstance(default, bool) and not isinstance(value, bool):
            raise UserError(f"{key}.{name}={value!r} must be true or false")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(default, (int, float)) and not isinstance(default, bool) and not number:
            raise UserError(f"{key}.{name}={value!r} must be a number")


def _parameters(fn: Callable, filled: Iterable[str] = ()) -> dict | None:
    """The keyword parameters of `fn` (less those the code fills in) and their defaults;
    None: it takes any keyword."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in parameters if p.kind in named and p.name not in filled}


def _locate(path: str, key: str):
    """The object a dotted `_target_` names, as Hydra finds it (a module, then attributes)."""
    parts = str(path).split(".")
    for split in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:split])
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                continue  # not a module: perhaps a class, one dot further up
            raise UserError(f"{key}._target_={path!r} cannot be imported: {err}") from None
        try:
            return functools.reduce(getattr, parts[split:], module)
        except AttributeError as err:
            raise UserError(f"{key}._target_={path!r} cannot be found: {err}") from None
    raise UserError(f"{key}._target_={path!r} names no importable module")


def _check_registries(cfg: DictConfig) -> None:
    """Names looked up in transferlab's registries, and each entry's options."""
    from transferlab.finetune.regularizers import REGULARIZERS, check_kl_options
    from transferlab.models.backbones import check_architecture
    from transferlab.models.classical_heads import BUILDERS as CLASSICAL
    from transferlab.models.classical_heads import build_classical_head
    from transferlab.models.heads import HEADS

    backbone = cfg.backbone
    if backbone.get("_target_") == "transferlab.models.backbones.build_backbone":
        weights = backbone.get("weights") if backbone.get("weights_path") is None else None
        check_architecture(backbone.arch, weights)  # a weights file wins over `weights`
    heads = {**HEADS, **CLASSICAL}
    _check_choice(cfg.head, "head", heads, filled=("in_features", "num_classes"))
    if cfg.head.name in CLASSICAL:
        build_classical_head(**cfg.head)  # its own checks of the values; nothing is fitted
    regularizers = {"none": lambda: None, **REGULARIZERS}
    _check_choice(cfg.regularizer, "regularizer", regularizers, filled=("backbone", "head"))
    if cfg.regularizer.name == "kl_source":
        check_kl_options(cfg.regularizer)


def _check_choice(
    node: DictConfig, group: str, registry: dict[str, Callable], filled: Iterable[str]
) -> None:
    name = node.get("name")
    if name not in registry:
        raise UserError(f"{group}.name={name!r} is unknown; use {one_of(registry)}")
    _check_options(node, group, registry[name], f"{group}={name}", filled, implied=("name",))


def _check_lightning_names(trainer: DictConfig) -> None:
    """Lightning refuses an unknown accelerator or strategy only when the Trainer is made."""
    if trainer.get("_target_") != "pytorch_lightning.Trainer":
        return
    from pytorch_lightning.accelerators import AcceleratorRegistry
    from pytorch_lightning.strategies import StrategyRegistry

    names = {
        "accelerator": ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())],
        "strategy": ["auto", *sorted(StrategyRegistry.available_strategies())],
    }
    for key, accepted in names.items():
        value = trainer.get(key, "auto")
        if not OmegaConf.is_dict(value) and value not in accepted:  # a dict: an instance
            raise UserError(f"trainer.{key}={value!r} is unknown; use {one_of(accepted)}")


def _try_optimizer_and_scheduler(cfg: DictConfig) -> None:
    """torch checks the values of their options (ranges, combinations) when they are made:
    made here for one dummy parameter, so a refused value fails before any run."""
    import torch
    from hydra.utils import instantiate

    from transferlab.finetune.optim import OWN_OPTIMIZER_KEYS, build_scheduler

    options = OmegaConf.to_container(cfg.optimizer, resolve=True)
    options = {k: v for k, v in options.items() if k not in OWN_OPTIMIZER_KEYS}
    try:
        optimizer = instantiate(options, _partial_=True)([torch.nn.Parameter(torch.zeros(1))])
    except REFUSED as error:
        raise _refused("optimizer", options, error) from None
    try:
        build_scheduler(cfg.scheduler, optimizer)
    except REFUSED as error:
        scheduler = OmegaConf.to_container(cfg.scheduler, resolve=True)
        raise _refused("scheduler", scheduler, error) from None


def _refused(group: str, options: dict, error: Exception) -> UserError:
    """`group: target(key=value, ...) is refused: <torch's reason>`."""
    arguments = ", ".join(f"{k}={v!r}" for k, v in options.items() if k != "_target_")
    reason = str(error).partition("\n")[0]
    return UserError(f"{group}: {options['_target_']}({arguments}) is refused: {reason}")


def _open_store(configured: str | None) -> None:
    """Opens the MLflow store, as the run would next (a new sqlite file gets its tables):
    a URI MLflow cannot use fails in one line rather than in MLflow's traceback."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from transferlab.tracking.store import tracking_uri

    uri = tracking_uri(configured)
    try:
        MlflowClient(tracking_uri=uri)
    except (MlflowException, OSError, ImportError) as error:
        key = "tracking.uri" if configured else "$MLFLOW_TRACKING_URI"
        reason = str(error).strip().partition("\n")[0]
        raise UserError(f"{key}={uri!r} cannot be used: {reason}") from None


# --- against the data: called by the pipeline before any MLflow run is opened ---------------


def check_folds_fit_data(cfg: DictConfig) -> None:
    """Stratified k-fold needs `cv.folds` images of every class in train+val: too many folds
    would otherwise fail only once the parent run and the first fold's run are recorded.
    Fold 0 is carved here as its run will carve it (the same code, the same line), from
    images at their native size: an image folder is listed, not decoded, and in-memory
    datasets stay small. Not at validation: it reads the data, which may be large."""
    if not cfg.cv.folds:
        return
    from transferlab.data.module import TransferDataModule
    from transferlab.data.splits import Fold
    from transferlab.data.transforms import Preprocessing

    native = Preprocessing(input_size=None)
    TransferDataModule(cfg.dataset, native, cfg.loader, Fold(0, cfg.cv.folds)).setup()
