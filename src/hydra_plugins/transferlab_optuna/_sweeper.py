"""The sweep loop: ask a batch of trials, run them as Hydra jobs, tell Optuna how each ended.

`n_trials` is the number of finished trials (complete, pruned or failed) the study holds
when the sweep ends, earlier sweeps' included: with a `storage` and a `study_name`, running
the same command again resumes the study (after a crash, or with a larger n_trials), and
several machines running it share the work (each may overshoot by its trials in flight).
Trials of a batch whose launch died (a crash, Ctrl-C) are told FAIL, never left RUNNING;
only a killed sweeper process leaves its running trials behind.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from hydra_plugins.transferlab_optuna._settings import Settings, with_direction
from hydra_plugins.transferlab_optuna._space import SearchSpace, grid, parse_search_space
from hydra_plugins.transferlab_optuna._study import (
    LIVE_STORAGES,
    SAMPLERS,
    build,
    build_pruner,
    open_storage,
    trials_in,
)
from transferlab.compat import (
    JobReturn,
    JobStatus,
    Quote,
    QuotedString,
    job_error,
    overrides_parser,
    runs_in_this_process,
)
from transferlab.errors import UserError
from transferlab.objective import run_metric
from transferlab.scrub import scrubbed
from transferlab.tracking.redaction import recorded_value, redacted_overrides
from transferlab.tracking.store import check_database, is_database
from transferlab.tracking.sweep import PARENT_RUN_ENV

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
RESULTS_FILE = "optimization_results.yaml"


class OptunaSweep:
    def __init__(
        self,
        settings: dict[str, Any],
        config: DictConfig,
        hydra_context: HydraContext,
        launcher: Launcher,
    ) -> None:
        self.settings = with_direction(Settings.parse(settings), run_metric(config))
        self.config = config
        self.parser = overrides_parser(hydra_context.config_loader)
        self.launcher = launcher
        self.cwd = config.hydra.runtime.cwd
        _check_study_reachable(self.settings, launcher)

    def run(self, arguments: list[str]) -> None:
        params = [f"{key}={value}" for key, value in (self.settings.params or {}).items()]
        space = parse_search_space([*params, *arguments], self.parser)
        if not space.distributions:
            raise UserError(
                "the Optuna sweeper has nothing to search: pass a sweep such as "
                "'optimizer.lr=tag(log, interval(1e-4, 1e-1))' or set hydra.sweeper.params"
            )
        study = self._open_study(space)
        target = self._target(space)
        print(
            f"[optuna] study {study.study_name} ({_storage_label(self.settings.storage)}): "
            f"{len(_finished(study))} of {target} trials finished; sampler "
            f"{self.settings.sampler}, pruner {self.settings.pruner}, {self.settings.direction}"
        )
        job_idx = 0
        while (todo := target - len(_finished(study))) > 0 and not _exhausted(study):
            trials = [
                study.ask(space.distributions) for _ in range(min(todo, self.settings.n_jobs))
            ]
            job_idx += self._run_batch(study, space, trials, job_idx)
        self._finish(study)

    def _open_study(self, space: SearchSpace) -> optuna.Study:
        """Creates the study, or loads it to resume (direction checked). The sampler's seed
        moves on with the trials already in the study, so a resumed study goes on with new
        draws instead of replaying the first sweep's."""
        settings = self.settings
        storage = open_storage(settings.storage, self.cwd)
        seed = settings.seed
        if seed is not None:
            seed += trials_in(storage, settings.study_name)
        extra = {"search_space": grid(space)} if settings.sampler == "grid" else {}
        study = optuna.create_study(
            storage=storage,
            study_name=settings.study_name,
            sampler=build(
                SAMPLERS, "sampler", settings.sampler, settings.samplers, seed=seed, **extra
            ),
            pruner=build_pruner(settings.pruner, settings.pruners),
            direction=settings.direction,
            load_if_exists=True,
        )
        if study.direction.name.lower() != settings.direction:
            raise UserError(
                f"study {study.study_name} was created to {study.direction.name.lower()}; "
                f"it cannot be resumed with hydra.sweeper.direction={settings.direction}"
            )
        LIVE_STORAGES[study.study_name] = storage
        return study

    def _target(self, space: SearchSpace) -> int:
        if self.settings.sampler != "grid":
            return self.settings.n_trials
        return min(self.settings.n_trials, math.prod(len(v) for v in grid(space).values()))

    def _run_batch(
        self, study: optuna.Study, space: SearchSpace, trials: list[optuna.Trial], job_idx: int
    ) -> int:
        """Runs the trials as one launcher call and records how each ended."""
        overrides = [
            [*space.overrides(t.params), *_job_overrides(study.study_name, t.number)]
            for t in trials
        ]
        try:
            returns = self.launcher.launch(overrides, initial_job_idx=job_idx)
        except BaseException:
            for trial in trials:
                _tell(study, trial, TrialState.FAIL, skip_if_finished=True)
            raise
        for trial, job in zip(trials, returns, strict=True):
            state, value, note = outcome(job)
            _tell(study, trial, state, value)
            shown = f" {value:.4f}" if value is not None else ""
            described = " ".join(redacted_overrides(space.describe(trial.params)))
            print(
                f"[optuna] trial {trial.number} {state.name}{shown}: {described}"
                + (f" ({scrubbed(note)})" if note else "")
            )
        return len(returns)

    def _finish(self, study: optuna.Study) -> None:
        """Best params: printed, saved to the sweep dir and logged to the MLflow sweep run,
        each as it may be recorded (see transferlab.tracking.redaction)."""
        best = best_trial(study)
        best_params = recorded_params(best)
        counts = Counter(t.state.name for t in _finished(study))
        results = {
            "name": "optuna",
            "study_name": study.study_name,
            "direction": self.settings.direction,
            "trials": dict(sorted(counts.items())),
            "best_trial": best.number if best else None,
            "best_value": best.value if best else None,
            "best_params": best_params,
        }
        folder = Path(self.config.hydra.sweep.dir)
        folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), folder / RESULTS_FILE)
        summary = ", ".join(f"{n} {state.lower()}" for state, n in results["trials"].items())
        print(f"[optuna] study {study.study_name}: {summary}")
        if best is None:
            print("[optuna] no trial completed: no best params")
        else:
            print(f"[optuna] best: trial {best.number} = {best.value:.4f} with {best_params}")
        log_to_sweep_run(study.study_name, best, best_params)


def outcome(job: JobReturn) -> tuple[TrialState, float | None, str]:
    """How a job ended, as a trial state, its objective value and a note."""
    if job.status != JobStatus.COMPLETED:
        error = job_error(job)
        state = TrialState.PRUNED if isinstance(error, optuna.TrialPruned) else TrialState.FAIL
        return state, None, f"{type(error).__name__}: {error}"
    try:
        value = float(job.return_value)
    except (TypeError, ValueError):
        return TrialState.FAIL, None, f"the job returned {job.return_value!r}, not a number"
    if math.isnan(value):
        return TrialState.FAIL, None, "objective NaN: the job failed"
    return TrialState.COMPLETE, value, ""


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    return study.best_trial if study.get_trials(states=(TrialState.COMPLETE,)) else None


def recorded_params(trial: FrozenTrial | None) -> dict[str, Any]:
    """A trial's sampled values, by key, as they may be recorded: none of a secret's key."""
    params = trial.params if trial else {}
    return {name: recorded_value(name, value) for name, value in params.items()}


def log_to_sweep_run(study_name: str, best: FrozenTrial | None, params: dict[str, Any]) -> None:
    """The study's best on the sweep's MLflow parent run (set up by transferlab's
    SweepTracking callback; nothing to do without it)."""
    run_id = os.environ.get(PARENT_RUN_ENV)
    if not run_id:
        return
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    from transferlab.tracking.mlflow_run import MAX_PARAM_VALUE

    tags = [RunTag("optuna.study_name", study_name)]
    logged = [Param(_param_key(k), str(v)[:MAX_PARAM_VALUE]) for k, v in params.items()]
    metrics = []
    if best is not None:
        tags.append(RunTag("optuna.best_trial", str(best.number)))
        metrics = [Metric("best/objective", best.value, int(time.time() * 1000), 0)]
    client = mlflow.MlflowClient(mlflow.get_tracking_uri())
    client.log_batch(run_id, metrics=metrics, params=logged, tags=tags)


def _param_key(name: str) -> str:
    """`best.<name>`, in the characters MLflow takes (a package override has `@`)."""
    return "best." + re.sub(r"[^\w\-. /]", "_", name)


def _tell(
    study: optuna.Study,
    trial: optuna.Trial,
    state: TrialState,
    value: float | None = None,
    skip_if_finished: bool = False,
) -> None:
    try:
        study.tell(trial, value, state=state, skip_if_finished=skip_if_finished)
    except RuntimeError as error:
        # GridSampler calls Study.stop after its last point, which only works inside
        # Study.optimize (optuna#4121); the trial is stored before that.
        if "Study.stop" not in str(error):
            raise


def _job_overrides(study_name: str, trial_number: int) -> list[str]:
    """Tell the job which trial it is, for pruning (transferlab.pruning)."""
    name = QuotedString(text=study_name, quote=Quote.single).with_quotes()
    return [f"+optuna.study_name={name}", f"+optuna.trial_number={trial_number}"]


def _finished(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


def _exhausted(study: optuna.Study) -> bool:
    sampler = study.sampler
    return isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)


def _storage_label(url: str | None) -> str:
    return "in memory" if url is None else make_url(url).render_as_string(hide_password=True)


def _check_study_reachable(settings: Settings, launcher: Launcher) -> None:
    """A database storage must answer now, not fail the first trial with a traceback (or
    hang: libpq waits forever for a host that drops packets). Pruning happens in the jobs:
    an in-memory study reaches only jobs in this process."""
    if settings.storage is not None and is_database(settings.storage):
        check_database("hydra.sweeper.storage", settings.storage)
    if (
        settings.storage is None
        and settings.pruner != "none"
        and not runs_in_this_process(launcher)
    ):
        raise UserError(
            f"hydra.sweeper.pruner={settings.pruner} with storage=null: the study is kept in "
            f"this process, but {type(launcher).__name__} runs jobs in others; set "
            "hydra.sweeper.storage=sqlite:///optuna.db"
        )
