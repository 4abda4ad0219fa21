"""Checks a composed config before any run is started: the one place where bad input is
caught. Every check raises a UserError that names the key, the bad value and what is
accepted.

Two passes, over the run's config and then over each stage it derives (its source stage,
its scratch baseline). The first (config_values, config_keys) reads plain values and
imports nothing heavy, so most mistakes are answered at once. The second (config_targets)
asks the code what it accepts: each `_target_`'s signature and own `check_options`, torch's
checks of optimizer and scheduler options. What spans components (a classical head and a
freeze strategy that trains the backbone) is checked here. Checks that need a built model
or the data (stage counts, weight files, dataset folders) happen where those are built,
still before training.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from transferlab.components import build, is_classical_head, options_of
from transferlab.config_targets import (
    check_lightning_names,
    check_targets,
    try_optimizer_and_scheduler,
)
from transferlab.config_values import check_plain_values
from transferlab.errors import UserError
from transferlab.objective import selection_of
from transferlab.report_figures import check_report_config
from transferlab.scrub import scrubbed, without_url_credentials
from transferlab.stage_configs import derived_stages
from transferlab.tracking.logged_model import check_register


def validate(cfg: DictConfig) -> None:
    """Raises a UserError for the first bad key; the cheap checks come first. The stages the
    run derives (its source stage, its scratch baseline) pass the same checks, before any
    run starts, as `source.*` / `scratch.*` merged onto the run's config."""
    check_plain_values(cfg)
    check_register(cfg)  # the job's model: the derived stages register none
    check_report_config(cfg)  # the study's figure: drawn from every stage's runs
    stages = derived_stages(cfg)
    for role, stage in stages.items():
        _in_stage(role, check_plain_values, stage)
    _check_against_code(cfg)
    for role, stage in stages.items():
        _in_stage(role, _check_against_code, stage)
    _open_store(cfg.tracking.uri)  # once: the derived stages record to the same store


def _in_stage(role: str, check: Callable[[DictConfig], None], stage: DictConfig) -> None:
    try:
        check(stage)
    except UserError as error:
        raise UserError(f"{role} stage (the config with {role}.* merged in): {error}") from None


def _check_against_code(cfg: DictConfig) -> None:
    check_targets(cfg)
    check_components_fit(cfg)
    check_lightning_names(cfg.trainer)
    check_accelerator(cfg.trainer.accelerator)
    try_optimizer_and_scheduler(cfg)


def check_accelerator(accelerator: str) -> None:
    """Also where a recorded config is run again (resume): the machine may have changed."""
    import torch

    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible; use trainer=cpu"
        )


def check_components_fit(cfg: DictConfig) -> None:
    """What spans components: a head fitted on frozen features needs a strategy that never
    trains the backbone, and then there is no trained network to regularise; a planned
    unfreeze must fall within the run's epochs."""
    for group in ("head", "freeze"):
        if cfg[group].get("_target_") is None:
            raise UserError(f"{group}._target_ is required: pick {group}=<option> or set it")
    freeze = build(cfg.freeze, "freeze")
    with options_of("freeze"):
        freeze.check_fits(cfg.trainer.max_epochs)
    if not is_classical_head(cfg.head):
        return
    head = _choice(cfg, "head")
    if selection_of(cfg) is not None:
        raise UserError(
            f"head={head} is fitted on frozen features once, but a target domain is "
            "selected and adapted to while a network trains; use a neural head (linear, mlp)"
        )
    if not freeze.never_trains_backbone(cfg.trainer.max_epochs):
        raise UserError(
            f"head={head} is fitted on frozen features, but freeze={_choice(cfg, 'freeze')} "
            "trains the backbone; use freeze=linear_probe or a neural head (linear, mlp)"
        )
    if cfg.regularizer.get("_target_") is not None:
        raise UserError(
            f"regularizer={_choice(cfg, 'regularizer')} keeps a trained network near the "
            f"source, but head={head} trains none; use regularizer=none or a neural head "
            "(linear, mlp)"
        )


def _choice(cfg: DictConfig, group: str) -> str:
    """How the user picked a group: its option's name, else its `_target_`."""
    from transferlab.tracking.run_info import group_choices

    return group_choices().get(group) or cfg[group].get("_target_")


def _open_store(configured: str | None) -> None:
    """Opens the MLflow store, as the run would next (a new sqlite file gets its tables):
    a URI MLflow cannot use fails in one line rather than in MLflow's traceback."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from transferlab.tracking.store import check_reachable, tracking_uri

    uri = tracking_uri(configured)
    check_reachable(uri)  # a server or database that does not answer: one line, at once
    try:
        MlflowClient(tracking_uri=uri)
    except (MlflowException, OSError, ImportError) as error:
        key = "tracking.uri" if configured else "$MLFLOW_TRACKING_URI"
        reason = str(error).strip().partition("\n")[0]
        shown = without_url_credentials(uri)
        raise UserError(f"{key}={shown!r} cannot be used: {scrubbed(reason)}") from None


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


def check_domains_match(cfg: DictConfig) -> None:
    """A target domain must have the dataset's classes: both are loaded (as
    check_folds_fit_data loads them) and compared by the code the run uses, before any
    MLflow run exists."""
    if selection_of(cfg) is None:
        return
    from transferlab.data.module import TransferDataModule
    from transferlab.data.transforms import Preprocessing

    TransferDataModule.for_run(cfg, Preprocessing(input_size=None)).setup()
