"""A training loss that becomes NaN or inf stops the run, naming the step: the run is FAILED,
and in a sweep only that trial fails while the sweep goes on."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from pytorch_lightning.strategies import SingleDeviceStrategy

from tests.conftest import FAST
from transferlab.builders import build_backbone_and_data, build_module, build_trainer
from transferlab.errors import TrainingDiverged
from transferlab.module import NonFiniteLossGuard

DIVERGES = "optimizer.lr=1e30"  # AdamW's first step throws the weights to ~1e30
FIRST_NAN = "the training loss is nan at global step 1 (epoch 0)"


def test_a_diverging_run_stops_at_the_step_and_is_failed_naming_it(train, runs):
    with pytest.raises(TrainingDiverged) as error:
        train(DIVERGES)
    message = str(error.value)
    assert message.startswith(FIRST_NAN)
    assert "optimizer.lr" in message and "gradient_clip_val" in message
    assert "\n" not in message
    (run,) = runs()
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == f"TrainingDiverged: {message}"


def test_on_a_cpu_it_stops_before_the_optimizer_applies_the_bad_step(make_config, tmp_path):
    cfg = make_config("callbacks=none", "trainer.max_epochs=1", DIVERGES)
    backbone, data = build_backbone_and_data(cfg)
    module = build_module(cfg, backbone, data.num_classes)
    trainer = build_trainer(cfg, False, tmp_path, "32-true")
    with pytest.raises(TrainingDiverged, match="at global step 1 "):
        trainer.fit(module, datamodule=data)
    assert trainer.global_step == 1
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_the_deferred_guard_only_records_and_its_check_names_the_first_bad_step():
    guard = NonFiniteLossGuard(torch.device("cpu"), deferred=True)
    strategy = SingleDeviceStrategy(torch.device("cpu"))
    for step, loss in enumerate([1.0, 2.0, math.inf, math.nan, 3.0]):
        guard.record(torch.tensor(loss), step, epoch=4)  # records only, never raises
    with pytest.raises(TrainingDiverged, match=r"loss is inf at global step 2 \(epoch 4\)"):
        guard.check(strategy, epoch=4)
    finite = NonFiniteLossGuard(torch.device("cpu"), deferred=True)
    finite.record(torch.tensor(1.0), 0, epoch=0)
    finite.check(strategy, epoch=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_run_fails_at_the_end_of_the_epoch_naming_the_first_bad_step(train, runs):
    with pytest.raises(TrainingDiverged, match=r"at global step \d+ \(epoch 0\)"):
        train(DIVERGES, "trainer=gpu", "trainer.precision=32-true")
    (run,) = runs()
    assert run.info.status == "FAILED"
    assert "TrainingDiverged: the training loss is" in run.data.tags["error"]


def test_in_a_sweep_the_diverging_trial_fails_and_the_sweep_goes_on(multirun, runs, capsys):
    """A real in-process multirun (Hydra's basic launcher), as `transferlab-train -m`."""
    assert multirun("optimizer.lr=1e-3,1e30", "trainer.max_epochs=1") == 1  # a job failed
    assert "2 jobs (1 failed, 1 finished)" in capsys.readouterr().out
    (parent,) = [r for r in runs() if r.data.tags.get("transferlab.role") == "sweep"]
    assert parent.info.status == "FINISHED"
    children = {
        r.data.params["optimizer.lr"]: r
        for r in runs()
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert children["0.001"].info.status == "FINISHED"
    assert children["1e+30"].info.status == "FAILED"
    assert FIRST_NAN in children["1e+30"].data.tags["error"]


@pytest.mark.slow
def test_the_cli_says_so_in_one_line_and_exits_1(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TRANSFERLAB_"))}
    result = subprocess.run(
        [sys.executable, "-m", "transferlab.train", *FAST, DIVERGES, "experiment_name=diverged"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    *store_set_up, line = result.stderr.strip().splitlines()  # a new store logs its tables
    assert line.startswith(f"error: {FIRST_NAN}; try a lower optimizer.lr")
    assert all("mlflow.store.db" in earlier for earlier in store_set_up)
