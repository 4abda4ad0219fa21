"""True subprocess runs: what only a real process shows (exit codes, the default store,
console output, an installed wheel). Each costs ~10-20 s here, so they are few."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
TINY = ["trainer.max_epochs=1", "~callbacks.progress_bar", "dataset.task.classes=[0,1,2]"]

pytestmark = pytest.mark.slow


def app(cwd: Path, *args: str, python: str = sys.executable, **env: str):
    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    environment.update(env)
    return subprocess.run(
        [python, "-m", "transferlab.train", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_real_run_writes_the_default_store_in_the_working_dir(tmp_path):
    result = app(tmp_path, *TINY, "experiment_name=cli")
    assert result.returncode == 0, result.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cli").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert "test/acc" in runs[0].data.metrics
    assert "#/experiments/" in result.stdout  # where to look in the UI


def test_bad_input_exits_non_zero_with_one_clear_message_and_no_traceback(tmp_path):
    result = app(tmp_path, "backbone=resnet99")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "Could not find 'backbone/resnet99'" in result.stderr
    assert "resnet18" in result.stderr  # the accepted options are listed
    missing = app(
        tmp_path,
        "dataset=image_folder",
        f"dataset.root={tmp_path / 'nowhere'}",
        "experiment_name=bad",
    )
    assert missing.returncode != 0
    assert "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: dataset.root={tmp_path / 'nowhere'} is not a directory; "
        "pass a folder of class folders"
    )
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("bad").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]  # recorded, never left RUNNING


def test_an_installed_wheel_carries_its_configs_and_studies(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            *map(str, wheels.glob("*.whl")),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(target)}
    study = app(elsewhere, "-cn", "digits_transfer", "--cfg", "job", **env)
    assert study.returncode == 0, study.stderr
    assert "train_per_class: 5" in study.stdout
    run = app(elsewhere, *TINY, **env)
    assert run.returncode == 0, run.stderr[-2000:]
    where = subprocess.run(
        [sys.executable, "-c", "import transferlab; print(transferlab.__file__)"],
        cwd=elsewhere,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(target))
