"""Interruption and resume: a run stopped by a real signal writes a resumable checkpoint,
ends KILLED, and `resume=<run id>` finishes it as the same MLflow run with exactly the
metrics of the same run never interrupted."""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.helpers import replace_artifact
from transferlab.errors import UserError
from transferlab.resume import RunInterrupted
from transferlab.tracking.recorded import CHECKPOINT_TAG
from transferlab.train import run as run_task

BASE = ["~callbacks.progress_bar", "~callbacks.early_stopping"]


def _history(client: MlflowClient, run) -> dict[str, list[tuple[int, float]]]:
    """Every metric's full history (step, value): a resumed run must match it all."""
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
    }


def _compared(client: MlflowClient, run) -> dict:
    history = _history(client, run)
    skip = ("time/", "inference/")  # wall-clock figures differ run to run
    return {k: v for k, v in history.items() if not k.startswith(skip)}


def _interrupt_then_resume(make_config, client, runs, overrides, step, tmp_path):
    once = tmp_path / "signal-sent"
    killer = (
        f"+callbacks.signal={{_target_: tests.helpers.SignalAtStep, step: {step}, once: '{once}'}}"
    )
    with pytest.raises(RunInterrupted) as stopped:
        run_task(make_config(*BASE, *overrides, killer))
    interrupted = runs()[-1]
    assert interrupted.info.status == "KILLED"
    assert interrupted.data.tags["transferlab.interrupted_by"] == "SIGTERM"
    resume = f"resume={interrupted.info.run_id}"
    assert resume in str(stopped.value)
    with pytest.raises(UserError) as refused:  # a value that differs from the recorded one
        run_task(make_config(*BASE, *overrides, killer, resume, "optimizer.lr=0.5"))
    assert f"{resume}: optimizer.lr=0.5 differs from the run's recorded optimizer.lr=0.001" in str(
        refused.value
    )
    run_task(make_config(*BASE, *overrides, killer, resume))  # the same command, resume added
    return client.get_run(interrupted.info.run_id)


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.max_epochs=4"],
        # the milestone (epoch 2) comes after the interruption (step 20 of ~17 a epoch)
        ["trainer.max_epochs=4", "freeze=gradual", "freeze.milestones=[2,3]"],
        ["trainer.max_epochs=4", "scheduler=plateau", "scheduler.patience=0"],
        # a PEFT checkpoint holds only what trained: the rest comes from the rebuilt base
        [
            "trainer.max_epochs=8",  # 3 steps an epoch: interrupted in epoch 6
            "backbone=vit_tiny_p4",
            "freeze=lora",
            "dataset.task.classes=[0,1,2]",
            "dataset.task.train_per_class=16",
            "loader.batch_size=16",
        ],
        # adapting: the target's batches (an order of their own) and DANN's ramp go on too
        [
            "trainer.max_epochs=3",  # 8 steps an epoch: interrupted in epoch 2
            "dataset=printed_digits",
            "dataset.per_class=40",
            "target_domain=digits",
            "adapt=dann",
            "loader.batch_size=32",
        ],
    ],
    ids=["plain", "gradual-unfreezing", "plateau-scheduler", "lora", "dann"],
)
def test_a_resumed_run_ends_exactly_as_one_never_interrupted(
    make_config, client, runs, overrides, tmp_path
):
    run_task(make_config(*BASE, *overrides))
    reference = runs()[-1]
    resumed = _interrupt_then_resume(make_config, client, runs, overrides, 20, tmp_path)
    assert len(runs()) == 2  # the same run went on: no second one
    assert resumed.info.status == "FINISHED"
    assert _compared(client, resumed) == _compared(client, reference)
    params = {k: v for k, v in resumed.data.params.items() if not k.startswith("callbacks.signal")}
    assert params == reference.data.params  # logged once, by the run that started


def test_resume_refuses_a_finished_run_and_an_unknown_one(make_config, runs):
    run_task(make_config(*BASE, "trainer.max_epochs=1"))
    finished = runs()[-1].info.run_id
    with pytest.raises(UserError, match="has finished; nothing to resume"):
        run_task(make_config(f"resume={finished}"))
    with pytest.raises(UserError, match="neither a checkpoint file nor a run"):
        run_task(make_config("resume=not-a-run"))


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_needs_pickle_is_refused_and_its_payload_never_runs(
    make_config, tmp_path
):
    marker = tmp_path / "payload-ran"
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "evil": _Payload(marker)}, checkpoint)
    with pytest.raises(UserError, match="needs pickle to load"):
        run_task(make_config(f"resume={checkpoint}"))
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is real: loading runs it
    assert marker.exists()


def _truncate(path: Path) -> None:
    """What a crash or a full disk leaves of a checkpoint written in place."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_checkpoint_file_is_one_clear_line(make_config, runs):
    run_task(make_config(*BASE, "trainer.max_epochs=2"))
    last = Path(runs()[-1].data.tags[CHECKPOINT_TAG])
    _truncate(last)
    with pytest.raises(UserError) as error:
        run_task(make_config(f"resume={last}"))
    message = str(error.value)
    assert message.startswith(f"resume={last} cannot be read: it is truncated, corrupt or not")
    assert "\n" not in message


def test_a_truncated_last_checkpoint_of_a_run_id_is_one_clear_line(
    make_config, client, runs, tmp_path
):
    once = tmp_path / "signal-sent"
    killer = f"+callbacks.signal={{_target_: tests.helpers.SignalAtStep, step: 20, once: '{once}'}}"
    with pytest.raises(RunInterrupted):
        run_task(make_config(*BASE, "trainer.max_epochs=3", killer))
    interrupted = runs()[-1]
    last = Path(interrupted.data.tags[CHECKPOINT_TAG])
    _truncate(last)
    with pytest.raises(UserError) as error:  # the same command (its own callback), resumed
        run_task(
            make_config(*BASE, "trainer.max_epochs=3", killer, f"resume={interrupted.info.run_id}")
        )
    message = str(error.value)
    # refused before it is read: it is no longer the file whose sha256 the run recorded
    run_id = interrupted.info.run_id
    assert str(last) in message and f"checkpoints/last.ckpt of run {run_id} has sha256" in message
    assert "\n" not in message
    assert client.get_run(interrupted.info.run_id).info.status != "RUNNING"


@pytest.mark.slow
def test_sigterm_to_a_real_process_then_resume(make_config, client, runs, tracking_uri, tmp_path):
    """A real process, a real SIGTERM mid-way: exit 143, run KILLED; resumed in-process, it
    ends as the uninterrupted run did."""
    overrides = [*BASE, "trainer.max_epochs=12"]
    run_task(make_config(*overrides))
    reference = runs()[-1]
    experiment = reference.info.experiment_id
    name = client.get_experiment(experiment).name
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "transferlab.train",
            *overrides,
            f"tracking.uri={tracking_uri}",
            f"experiment_name={name}",
            f"hydra.run.dir={out}",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    first_checkpoint = out / "finetune" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not first_checkpoint.exists() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    interrupted = runs()[-1]
    assert interrupted.info.status == "KILLED"
    assert f"resume={interrupted.info.run_id}" in stderr
    assert "Traceback" not in stderr
    run_task(make_config(f"resume={interrupted.info.run_id}"))
    resumed = client.get_run(interrupted.info.run_id)
    assert resumed.info.status == "FINISHED"
    assert _compared(client, resumed) == _compared(client, reference)


def test_a_resume_never_writes_into_a_folder_a_planted_config_names(
    make_config, client, runs, tmp_path
):
    """The recorded output_dir is data from the store: the run goes on in it only where it
    holds the checkpoint being resumed, not in a folder someone wrote into config.yaml."""
    overrides = ["trainer.max_epochs=2"]
    once = tmp_path / "signal-sent"
    killer = f"+callbacks.signal={{_target_: tests.helpers.SignalAtStep, step: 20, once: '{once}'}}"
    with pytest.raises(RunInterrupted):
        run_task(make_config(*BASE, *overrides, killer))
    run_id = runs()[-1].info.run_id
    victim = tmp_path / "victim"
    victim.mkdir()
    replace_artifact(
        client, run_id, "config.yaml", lambda tree: tree.update(output_dir=str(victim)), tmp_path
    )
    run_task(make_config(*BASE, *overrides, killer, f"resume={run_id}"))
    assert client.get_run(run_id).info.status == "FINISHED"
    assert list(victim.iterdir()) == []
