"""Shared fixtures: one real sqlite MLflow store per test session, configs composed through
Hydra's compose API and run in-process (a new Python process costs ~10 s here)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import pytorch_lightning  # noqa: F401 - imported now: see below
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, open_dict

from transferlab.runtime import setup

setup()  # as every entry point does: studies and the Optuna sweeper registered, logs quiet
# Lightning gives its logger a handler on sys.stderr when first imported: imported inside a
# test, that is the test's captured stream, closed after it, and every later Lightning log
# line printed "--- Logging error ---" into whichever test ran then.

# The smallest budgets that still train: a couple of epochs (the scratch baseline's too), no
# progress bar.
FAST = ["trainer.max_epochs=2", "scratch.trainer.max_epochs=2", "~callbacks.progress_bar"]


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """A real sqlite store, created once: creating its schema costs ~8 s."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    return uri


@pytest.fixture(scope="session")
def feature_cache_dir(tmp_path_factory) -> str:
    """Shared by the whole session, as by a user's runs: later tests may hit it."""
    return str(tmp_path_factory.mktemp("feature_cache"))


@pytest.fixture
def client(tracking_uri) -> MlflowClient:
    return MlflowClient(tracking_uri)


@pytest.fixture
def experiment(request) -> str:
    """An experiment name of the test's own, so tests sharing the store do not mix runs."""
    return re.sub(r"[^A-Za-z0-9_]+", "-", request.node.name)[:100]


@pytest.fixture
def make_config(
    tmp_path, tracking_uri, client, experiment, feature_cache_dir
) -> Callable[..., DictConfig]:
    """Composes a config as the Hydra app would (HydraConfig set, choices recorded)."""
    if client.get_experiment_by_name(experiment) is None:  # artifacts in tmp, not ./mlruns
        client.create_experiment(experiment, artifact_location=str(tmp_path / "artifacts"))

    def make(*overrides: str, config_name: str = "train") -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_module("transferlab.conf", version_base="1.3"):
            cfg = compose(
                config_name,
                overrides=[
                    f"tracking.uri='{tracking_uri}'",
                    f"experiment_name='{experiment}'",
                    f"feature_cache.dir='{feature_cache_dir}'",
                    *overrides,
                ],
                return_hydra_config=True,
            )
        HydraConfig().set_config(cfg)
        with open_dict(cfg):  # as in the app: the task sees no `hydra` node
            del cfg["hydra"]
            cfg.output_dir = str(tmp_path / "outputs")
        return cfg

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture
def multirun(
    tracking_uri, feature_cache_dir, client, experiment, tmp_path, monkeypatch
) -> Callable[..., int]:
    """`transferlab-train -m OVERRIDES` through the real Hydra app in this process (Hydra's
    basic launcher, the sweep's MLflow callback); returns its exit code."""
    from transferlab.tracking.sweep import PARENT_RUN_ENV
    from transferlab.train import main

    if client.get_experiment_by_name(experiment) is None:  # artifacts in tmp, not ./mlruns
        client.create_experiment(experiment, artifact_location=str(tmp_path / "artifacts"))
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)  # and unset again whatever happens

    def run(*overrides: str, config_name: str = "train") -> int:
        monkeypatch.setattr(
            sys,
            "argv",
            [
                "transferlab-train",
                "-cn",
                config_name,
                "-m",
                *FAST,
                f"tracking.uri='{tracking_uri}'",
                f"feature_cache.dir='{feature_cache_dir}'",
                f"experiment_name={experiment}",
                f"hydra.sweep.dir='{tmp_path / 'sweep'}'",
                "hydra/job_logging=none",  # leave the test session's logging as it is
                "hydra/hydra_logging=none",
                *overrides,
            ],
        )
        GlobalHydra.instance().clear()
        try:
            main()
        except SystemExit as exited:
            return exited.code
        finally:
            GlobalHydra.instance().clear()
        return 0

    return run


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium; a test run without it skips, except in CI (.ci/run installs it).
    Requested first, so that a skip starts no study and no server."""
    from tests.helpers import CHROMIUM

    if CHROMIUM.exists():
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run installs it (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")


@pytest.fixture
def train(make_config) -> Callable[..., float]:
    """Runs the real task function (validation included) on a composed config."""
    from transferlab.train import run as run_task

    def run(*overrides: str, config_name: str = "train") -> float:
        return run_task(make_config(*FAST, *overrides, config_name=config_name))

    return run


def runs_of(client: MlflowClient, experiment: str):
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.fixture
def runs(client, experiment) -> Callable[[], list]:
    return lambda: runs_of(client, experiment)


PYTHON = sys.executable
