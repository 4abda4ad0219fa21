"""What every run records about itself: its name, group choices, params, config files and
the tags that link it to its sweep; and the record of a sweep job that failed before its
run existed. Read back by rerun, resume and export (see tracking.recorded)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from transferlab.components import target_name
from transferlab.objective import GROUPS, selection_of
from transferlab.scrub import scrubbed
from transferlab.tracking.environment import device_name, environment_tags
from transferlab.tracking.mlflow_run import MAX_PARAM_VALUE, TrackedRun, Tracker
from transferlab.tracking.recorded import EXPERIMENT_CONFIG, STAGE_CONFIG
from transferlab.tracking.redaction import flatten, redacted, redacted_command, redacted_overrides
from transferlab.tracking.store import tracking_uri
from transferlab.tracking.sweep import PARENT_RUN_ENV, SWEPT_KEYS_ENV, short_keys, short_value

MAX_RUN_NAME = 250  # characters: well under MLflow's 500, and still readable in a list
NAMED_GROUPS = ("backbone", "freeze", "optimizer", "adapt")  # choices a run's name shows


def sweep_tags() -> dict[str, str]:
    """Inside a multirun: the job's run is a child of the sweep's parent run."""
    parent = os.environ.get(PARENT_RUN_ENV)
    if not parent:
        return {}
    return {"mlflow.parentRunId": parent, "transferlab.overrides": " ".join(_overrides())}


def record_failed_job(cfg: DictConfig, error: Exception) -> None:
    """A job that failed before its run existed (or outside it) still leaves a FAILED child."""
    if not os.environ.get(PARENT_RUN_ENV) or getattr(error, "recorded_in_sweep", False):
        return
    tracker = Tracker(tracking_uri(cfg.tracking.uri), cfg.experiment_name)
    tags = {
        **sweep_tags(),  # its parent and overrides
        "error": scrubbed(f"{type(error).__name__}: {error}")[:MAX_PARAM_VALUE],
        "transferlab.role": "failed-job",
    }
    name = f"failed-job {swept_values()}".strip()  # which job, as its run would be named
    run = tracker.client.create_run(tracker.experiment_id, run_name=name, tags=tags)
    tracker.client.set_terminated(run.info.run_id, "FAILED")


def run_tags(cfg: DictConfig, role: str) -> dict[str, str]:
    """With a target domain, how the run chose its checkpoint: `oracle` (target labels)
    marks an upper bound, never a result to report as adaptation's."""
    selection = selection_of(cfg)
    return {
        "transferlab.role": role,
        **environment_tags(device_name(cfg.trainer.accelerator)),
        "command": redacted_command(sys.argv),  # in place of environment_tags' own, unredacted
        **({"transferlab.selection": selection} if selection else {}),
    }


def group_choices() -> dict[str, str]:
    """Which file of each config group was picked (empty outside a Hydra app); a study's
    own group (experiments/domain_method) where the sweep varies it, so that the report
    can name a setting by it."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    swept = os.environ.get(SWEPT_KEYS_ENV, "").split(",")  # a study's own group: domain_method
    return {g: str(choices[g]) for g in (*GROUPS, *swept) if g in choices}


def run_name(cfg: DictConfig, choices: dict[str, str], role: str, suffix: str = "") -> str:
    """`small_cnn-none-adamw` from the choices, then `suffix` (`-fold0`), then in a sweep
    what tells this job from the others (`tpc=2 seed=1`). A source run names its source
    task; a scratch run is named by run_stages, after the run it is the baseline of."""
    backbone = choices.get("backbone", cfg.backbone.get("arch", "backbone"))
    if role == "source":
        source = choices.get("source")
        return f"{backbone}-source" + (f"-{source}" if source else "")
    if role == "scratch":
        return f"{backbone}-scratch"
    freeze = choices.get("freeze") or target_name(cfg.freeze)
    optimizer = choices.get("optimizer", cfg.optimizer._target_.rsplit(".", 1)[-1].lower())
    name = f"{backbone}-{freeze}-{optimizer}"
    if selection_of(cfg) is not None:
        adapt = choices.get("adapt") or target_name(cfg.adapt) or "none"
        name += f"-{'source_only' if adapt == 'none' else adapt}-{selection_of(cfg)}"
    swept = swept_values()
    return f"{name}{suffix} {swept}"[:MAX_RUN_NAME] if swept else f"{name}{suffix}"


def swept_values() -> str:
    """In a sweep, this job's values of the keys the sweep varies, short (`tpc=2 seed=1`;
    see tracking.sweep.short_keys), without the choices the name shows already."""
    from transferlab.compat import parse_override

    swept = os.environ.get(SWEPT_KEYS_ENV, "").split(",")
    given = {}
    for text in _overrides():
        override = parse_override(text)
        if override is not None:
            given[override.key_or_group] = text.partition("=")[2]
    keys = [key for key in swept if key in given and key not in NAMED_GROUPS]
    short = short_keys(keys)
    return " ".join(f"{short[key]}={short_value(given[key])}" for key in keys)


def log_config(
    run: TrackedRun,
    tracker: Tracker,
    cfg: DictConfig,
    choices: dict,
    role: str,
    stage_dir: Path,
) -> None:
    """Group choices and every leaf value as params; as files, this stage's full config,
    the command-line overrides and the whole experiment's config (what a rerun runs). All
    as recorded (see tracking.redaction): no secret, values of the environment as `${oc.env:..}`."""
    recorded = redacted(cfg, tracker.experiment)
    params = {**choices, "role": role, **flatten(OmegaConf.to_container(recorded))}
    params.pop("output_dir")  # differs every run; the run's own folder, not a setting
    run.log_params(params)
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / STAGE_CONFIG).write_text(OmegaConf.to_yaml(recorded))
    (stage_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(_overrides()))
    (stage_dir / EXPERIMENT_CONFIG).write_text(OmegaConf.to_yaml(tracker.experiment))
    for name in (STAGE_CONFIG, "overrides.yaml", EXPERIMENT_CONFIG):
        run.log_artifact(stage_dir / name)


def _overrides() -> list[str]:
    """The command-line overrides, as they may be recorded."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    given = OmegaConf.to_container(HydraConfig.get().overrides.task)  # as typed, unresolved
    return redacted_overrides(given)
