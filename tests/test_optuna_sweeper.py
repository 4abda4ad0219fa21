"""The Optuna sweeper (hydra/sweeper=optuna): search spaces from Hydra's override grammar,
settings checks, and real multiruns in a subprocess that prune, fail, finish and resume."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.utils import get_class
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.transferlab_optuna import OptunaSweeper
from hydra_plugins.transferlab_optuna._settings import Settings
from hydra_plugins.transferlab_optuna._space import grid, parse_search_space
from hydra_plugins.transferlab_optuna._study import build_pruner, open_storage, trials_in
from hydra_plugins.transferlab_optuna._sweeper import outcome
from transferlab.errors import RunStopped, UserError

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- search space: Hydra's override grammar -> Optuna distributions ----------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optimizer.lr=interval(0.1, 1)", FloatDistribution(0.1, 1.0)),
        ("loader.batch_size=int(interval(8, 64))", IntDistribution(8, 64)),
        ("optimizer.lr=tag(log, interval(1e-4, 1e-1))", FloatDistribution(1e-4, 0.1, log=True)),
        ("head.hidden=tag(log, int(interval(16, 256)))", IntDistribution(16, 256, log=True)),
        ("trainer.max_epochs=range(2, 10, 2)", IntDistribution(2, 8, step=2)),  # stop excluded
        ("trainer.max_epochs=range(10, 0, -5)", IntDistribution(5, 10, step=5)),
        ("head.dropout=range(0.0, 0.5, 0.1)", FloatDistribution(0.0, 0.4, step=0.1)),
        ("freeze=choice(none, linear_probe)", CategoricalDistribution(["none", "linear_probe"])),
        ("freeze=none,linear_probe", CategoricalDistribution(["none", "linear_probe"])),
        ("loader.batch_size=16,32", CategoricalDistribution([16, 32])),
    ],
)
def test_each_sweep_of_the_override_grammar_becomes_an_optuna_distribution(override, expected):
    space = parse_search_space([override])
    assert list(space.distributions.values()) == [expected]
    assert space.fixed == []


def test_other_overrides_reach_every_trial_as_typed_and_the_last_one_of_a_key_wins():
    space = parse_search_space(
        [
            "optimizer.lr=interval(0.1, 1)",  # e.g. from hydra.sweeper.params ...
            "trainer.max_epochs=4",
            "~callbacks.progress_bar",
            "+extra=choice(1, 2)",
            "optimizer.lr=tag(log, interval(1e-5, 1e-2))",  # ... replaced on the command line
            "seed=0,1",
            "seed=3",
        ]
    )
    assert space.fixed == ["trainer.max_epochs=4", "~callbacks.progress_bar", "seed=3"]
    assert space.distributions == {
        "optimizer.lr": FloatDistribution(1e-5, 1e-2, log=True),
        "extra": CategoricalDistribution([1, 2]),
    }
    overrides = space.overrides({"optimizer.lr": 1.5e-05, "extra": 2})
    assert overrides == [*space.fixed, "optimizer.lr=1.5e-05", "+extra=2"]


def test_sampled_values_come_back_through_hydras_parser_unchanged():
    space = parse_search_space(["a=choice('x y', [1,2], {k: v}, true, 0.5, plain)"])
    (choices,) = [d.choices for d in space.distributions.values()]
    parser = OverridesParser.create()
    assert choices == ("x y", "[1,2]", "{k:v}", True, 0.5, "plain")
    parsed = [parser.parse_override(space.overrides({"a": c})[0]).value() for c in choices]
    assert parsed == ["x y", [1, 2], {"k": "v"}, True, 0.5, "plain"]


def test_the_grid_sampler_gets_every_value_of_a_discrete_space():
    space = parse_search_space(
        ["a=range(0, 1, 0.25)", "b=int(interval(1, 3))", "c=x,y", "d=shuffle(range(0, 9, 4))"]
    )
    assert grid(space) == {
        "a": [0.0, 0.25, 0.5, 0.75],
        "b": [1, 2, 3],
        "c": ["x", "y"],
        "d": [0, 4, 8],
    }
    with pytest.raises(UserError, match="sampler=grid needs discrete values, but e is contin"):
        grid(parse_search_space(["e=interval(0, 1)"]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=tag(lg, interval(1e-4, 1))", "unknown tag lg; use tag(log, interval(a,b))"),
        ("trainer.max_epochs=range(5, 1)", "the range is empty"),
        ("optimizer.lr=tag(log, interval(0, 1))", "optimizer.lr=tag(log, interval(0, 1)): "),
        ("optimizer.lr=interval(1, 0.1)", "optimizer.lr=interval(1, 0.1): "),
    ],
)
def test_a_bad_sweep_is_one_line_naming_it(override, message):
    with pytest.raises(UserError) as error:
        parse_search_space([override])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


# --- settings ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def yaml_settings() -> dict:
    """conf/hydra/sweeper/optuna.yaml as Hydra composes it."""
    GlobalHydra.instance().clear()
    with initialize_config_module("transferlab.conf", version_base="1.3"):
        cfg = compose("train", ["hydra/sweeper=optuna"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg.hydra.sweeper)


def test_the_config_file_names_the_sweeper_and_its_defaults_are_valid(yaml_settings):
    settings = dict(yaml_settings)
    target = settings.pop("_target_")  # the name Hydra looks the registered class up by
    assert target == f"{OptunaSweeper.__module__}.{OptunaSweeper.__name__}"
    assert issubclass(get_class(target), Sweeper)
    parsed = Settings.parse(settings)
    assert (parsed.sampler, parsed.direction, parsed.pruner, parsed.storage) == (
        "tpe",
        None,  # follows optimize_metric
        "none",
        None,
    )
    for name, options in parsed.pruners.items():
        build_pruner(name, parsed.pruners)  # every pruner's options fit its class
        assert options


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sampler": "bayes"}, "sampler=bayes is unknown; use tpe, random, cmaes or grid"),
        ({"pruner": "asha"}, "pruner=asha is unknown; use none, median, successive_halving or hyp"),
        ({"direction": "up"}, "hydra.sweeper.direction=up is unknown; use maximize or minimize"),
        ({"n_trials": 0}, "hydra.sweeper.n_trials=0 must be a whole number >= 1"),
        ({"n_jobs": "2"}, "hydra.sweeper.n_jobs='2' must be a whole number >= 1"),
        ({"seed": 1.5}, "hydra.sweeper.seed=1.5 must be a whole number or null"),
        ({"n_trails": 5}, "hydra.sweeper.n_trails is not a setting; use direction, n_trials"),
    ],
)
def test_bad_settings_are_one_line_naming_the_key_and_what_is_accepted(
    yaml_settings, change, message
):
    settings = {k: v for k, v in yaml_settings.items() if k != "_target_"}
    with pytest.raises(UserError) as error:
        Settings.parse({**settings, **change})
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_pruner_options_that_its_class_does_not_take_are_one_line():
    with pytest.raises(UserError, match=r"hydra.sweeper.pruners.median: .*'patience'"):
        build_pruner("median", {"median": {"patience": 3}})


# --- outcomes and storage ------------------------------------------------------------------


def job(status: JobStatus, value) -> JobReturn:
    ret = JobReturn(status=status)
    ret.return_value = value
    return ret


def test_a_job_ends_as_a_trial_state():
    from transferlab.pruning import TrialPruned

    pruned = TrialPruned("pruned at epoch 1")
    assert isinstance(pruned, RunStopped)
    assert (pruned.status, pruned.tags) == ("KILLED", {"transferlab.pruned": "true"})
    assert outcome(job(JobStatus.COMPLETED, 0.75)) == (TrialState.COMPLETE, 0.75, "")
    assert outcome(job(JobStatus.FAILED, pruned))[0] == TrialState.PRUNED
    assert outcome(job(JobStatus.COMPLETED, math.nan))[0] == TrialState.FAIL
    assert outcome(job(JobStatus.COMPLETED, "high"))[0] == TrialState.FAIL
    assert outcome(job(JobStatus.FAILED, RuntimeError("boom"))) == (
        TrialState.FAIL,
        None,
        "RuntimeError: boom",
    )


def test_a_relative_sqlite_storage_is_taken_from_the_sweep_dir_not_the_jobs(tmp_path):
    storage = open_storage("sqlite:///optuna.db", str(tmp_path))
    optuna.create_study(storage=storage, study_name="s").optimize(lambda t: 1.0, n_trials=2)
    assert (tmp_path / "optuna.db").is_file()
    assert trials_in(open_storage(f"sqlite:///{tmp_path}/optuna.db", "/"), "s") == 2
    assert trials_in(storage, "unknown") == 0


def test_runs_outside_an_optuna_sweep_get_no_pruning_callback():
    from transferlab.pruning import pruning_callbacks

    assert pruning_callbacks(OmegaConf.create({"optimize_metric": "val/acc"})) == []


# --- real multiruns (subprocesses) --------------------------------------------------------

# Good, terrible and invalid learning rates: some trials finish, some are pruned after the
# median pruner has seen 2 finished trials, lr=-1 fails. The sampler's seed fixes the order.
SWEEP = [
    "hydra/sweeper=optuna",
    "hydra.sweeper.sampler=random",
    "hydra.sweeper.seed=0",
    "hydra.sweeper.pruner=median",
    "hydra.sweeper.pruners.median.n_startup_trials=2",
    "hydra.sweeper.storage=sqlite:///optuna.db",
    "hydra.sweeper.study_name=lr",
    "optimizer.lr=choice(0.01, 0.003, 1e-6, 1e-7, -1)",
    "trainer.max_epochs=4",
    "~callbacks.progress_bar",
    "~callbacks.early_stopping",
    "dataset.task.classes=[0,1,2]",
    "experiment_name=optuna",
]
CHILD_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def multirun(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TRANSFERLAB_"))}
    return subprocess.run(
        [sys.executable, "-m", "transferlab.train", "-m", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def load_study(cwd: Path) -> optuna.Study:
    return optuna.load_study(study_name="lr", storage=f"sqlite:///{cwd / 'optuna.db'}")


def sweep_runs(cwd: Path) -> list[tuple]:
    """(parent, {trial number: child run}) for each sweep, oldest first."""
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("optuna").experiment_id
    runs = client.search_runs([experiment], order_by=["attributes.start_time ASC"])
    sweeps = []
    for parent in [r for r in runs if r.data.tags.get("transferlab.role") == "sweep"]:
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        by_trial = {trial_number(r): r for r in children}
        assert len(by_trial) == len(children)  # one child per trial
        sweeps.append((parent, by_trial))
    return sweeps


def trial_number(run) -> int:
    return int(re.search(r"\+optuna.trial_number=(\d+)", run.data.tags["transferlab.overrides"])[1])


@pytest.fixture(scope="module")
def first_sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("optuna_sweep")
    return cwd, multirun(cwd, *SWEEP, "hydra.sweeper.n_trials=5")


@pytest.mark.slow
def test_a_sweep_prunes_fails_and_finishes_trials_as_one_mlflow_study(first_sweep):
    cwd, result = first_sweep
    study = load_study(cwd)
    trials = study.get_trials()
    states = {t.number: t.state.name for t in trials}
    assert len(trials) == 5, result.stdout[-3000:] + result.stderr[-3000:]
    assert set(states.values()) <= {"COMPLETE", "PRUNED", "FAIL"}
    assert "PRUNED" in states.values()
    for t in trials:
        lr = t.params["optimizer.lr"]
        assert (t.state == TrialState.FAIL) == (lr == -1)
        if t.state == TrialState.PRUNED:
            assert lr < 1e-5 and len(t.intermediate_values) < 4  # stopped before the last epoch
    assert result.returncode == (1 if "FAIL" in states.values() else 0), result.stderr[-3000:]

    ((parent, children),) = sweep_runs(cwd)
    assert {n: c.info.status for n, c in children.items()} == {
        n: CHILD_STATUS[s] for n, s in states.items()
    }
    for number, child in children.items():
        assert (child.data.tags.get("transferlab.pruned") == "true") == (states[number] == "PRUNED")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna.study_name"] == "lr"
    assert parent.data.params["best.optimizer.lr"] == str(study.best_params["optimizer.lr"])
    assert parent.data.metrics["best/objective"] == study.best_value
    (results,) = cwd.glob("multirun/*/*/optimization_results.yaml")
    assert OmegaConf.load(results).best_params == study.best_params
    assert f"[optuna] best: trial {study.best_trial.number}" in result.stdout


@pytest.mark.slow
def test_the_same_command_with_more_trials_resumes_the_study(first_sweep):
    cwd, _ = first_sweep
    before = {t.number: (t.state, t.params) for t in load_study(cwd).get_trials()}
    result = multirun(cwd, *SWEEP, "hydra.sweeper.n_trials=7")
    assert "[optuna] study lr (sqlite:///optuna.db): 5 of 7 trials finished" in result.stdout
    after = load_study(cwd).get_trials()
    assert len(after) == 7, result.stderr[-3000:]
    assert {t.number: (t.state, t.params) for t in after[:5]} == before
    assert all(t.state.is_finished() for t in after)
    (_, first), (_, second) = sweep_runs(cwd)
    assert (sorted(first), sorted(second)) == ([0, 1, 2, 3, 4], [5, 6])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            ["hydra.sweeper.sampler=bayes"],
            "hydra.sweeper.sampler=bayes is unknown; use tpe, random, cmaes or grid",
        ),
        (
            ["optimize_metric=val/loss", "hydra.sweeper.direction=maximize"],
            "hydra.sweeper.direction=maximize contradicts optimize_metric='val/loss', which is "
            "minimized; leave hydra.sweeper.direction unset (it follows optimize_metric)",
        ),
    ],
)
def test_a_bad_setting_stops_the_sweep_with_one_line_before_any_trial(tmp_path, settings, message):
    no_mlflow = "~hydra.callbacks.sweep_tracking"  # spares ~8 s of creating an MLflow store
    result = multirun(
        tmp_path, "hydra/sweeper=optuna", *settings, "optimizer.lr=0.1,0.2", no_mlflow
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert message in result.stderr.splitlines()
    assert not list(tmp_path.glob("multirun/*/*/0"))  # no trial ran
