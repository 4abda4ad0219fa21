"""DDP as a user runs it: `trainer=ddp` on two CPU processes (gloo), where Lightning starts
the second by running the command line again. The run is recorded once, by rank 0, with
metrics over both processes' shares of the data; one checkpoint, one output folder. Under
multirun each job's processes run that job alone. Plus the samplers' sharding, in-process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from mlflow.tracking import MlflowClient

from transferlab.data.module import ShuffledBatches, evaluation_batches
from transferlab.distributed import is_global_zero

# Two CPU processes; batches of 16 give each ~28 steps an epoch, enough to leave chance.
DDP = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "loader.batch_size=16",
    "~callbacks.progress_bar",
    "experiment_name=ddp",
]


def app(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "transferlab.train", *args, *DDP]  # flags first
    store = f"tracking.uri=sqlite:///{cwd / 'mlflow.db'}"
    return subprocess.run([*command, store], cwd=cwd, capture_output=True, text=True, timeout=300)


def runs_in(cwd: Path) -> tuple[MlflowClient, list]:
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ddp").experiment_id
    return client, client.search_runs([experiment], order_by=["attributes.start_time ASC"])


def epochs_logged(client: MlflowClient, run, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


def test_rank_zero_alone_is_global_zero(monkeypatch):
    for name in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert is_global_zero()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "0")
    assert is_global_zero()
    monkeypatch.setenv("NODE_RANK", "1")  # the first process of a second node
    assert not is_global_zero()


@pytest.mark.parametrize("num_samples", [None, 29, 200])
def test_each_process_trains_on_its_own_batches_of_the_epoch(num_samples):
    size, batch = 100, 8
    alone = ShuffledBatches(size, batch, seed=3, num_samples=num_samples)
    shares = [
        ShuffledBatches(size, batch, 3, num_samples, num_replicas=3, rank=r) for r in range(3)
    ]
    for sampler in (alone, *shares):
        sampler.set_epoch(2)
    order = list(alone)
    assert [len(s) for s in shares] == [len(order) // 3] * 3  # as many steps everywhere
    for rank, share in enumerate(shares):
        assert list(share) == order[rank::3][: len(share)]  # a step: consecutive batches


def test_each_process_scores_its_own_share_of_every_image():
    shares = [list(evaluation_batches(11, 2, num_replicas=3, rank=r)) for r in range(3)]
    scored = sorted(i for share in shares for batch in share for i in batch)
    assert scored == list(range(11))
    assert all(shares)  # every process has a batch: each takes part in the evaluation


def single_process_test_accuracy(checkpoint: Path) -> tuple[float, int]:
    """The checkpoint scored on the whole test split in this process."""
    from transferlab.builders import build_backbone_and_data, build_module

    with initialize_config_module("transferlab.conf", version_base="1.3"):
        cfg = compose("train", overrides=DDP)
    backbone, data = build_backbone_and_data(cfg)
    module = build_module(cfg, backbone, data.num_classes)
    module.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    module.eval()
    correct = count = 0
    with torch.no_grad():
        for images, targets in data.test_dataloader():
            correct += int((module(images).argmax(dim=1) == targets).sum())
            count += len(targets)
    return correct / count, count


@pytest.mark.slow
def test_a_ddp_run_is_recorded_once_with_metrics_over_both_processes(tmp_path):
    out = tmp_path / "out"
    result = app(tmp_path, "trainer.max_epochs=2", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in result.stdout + result.stderr  # two processes indeed
    assert result.stdout.count("transferlab results") == 1  # rank 0 prints the summary

    client, runs = runs_in(tmp_path)
    assert [r.info.status for r in runs] == ["FINISHED"]
    run = runs[0]
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"):
        assert key in run.data.metrics
    assert epochs_logged(client, run, "val/acc") == [0, 1]  # once an epoch, not per process

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoints", "test", "backbone.pt", "config.yaml"} <= artifacts
    logged = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert logged == ["checkpoints/best.ckpt"]
    checkpoints = sorted(p.name for p in out.rglob("*.ckpt"))
    assert checkpoints == ["best.ckpt", "last.ckpt"]
    # one output folder, shared: rank 1 logs into it and writes nothing else anywhere
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlruns", "out"]
    assert (out / "train_ddp_process_1.log").is_file()

    # test/acc is the count over both processes' shares: scored in one process, the
    # recorded best checkpoint gets exactly it, on every test image once
    (best,) = out.rglob("best.ckpt")
    accuracy, count = single_process_test_accuracy(best)
    assert run.data.metrics["test/acc"] == pytest.approx(accuracy, abs=1e-6)
    report = (out / "finetune" / "test" / "per_class_report.txt").read_text()
    assert int(re.search(r"accuracy\s+\S+\s+(\d+)", report).group(1)) == count  # all gathered


@pytest.mark.slow
def test_a_ddp_multirun_runs_each_job_once_in_its_own_processes(tmp_path):
    sweep = tmp_path / "sweep"
    result = app(tmp_path, "-m", "trainer.max_epochs=1,2", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]

    client, runs = runs_in(tmp_path)
    parents = [r for r in runs if r.data.tags.get("transferlab.role") == "sweep"]
    assert [r.info.status for r in parents] == ["FINISHED"]
    children = [r for r in runs if r not in parents]
    assert [r.info.status for r in children] == ["FINISHED"] * 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    # each job trained as long as its own value says: its second process ran that job
    assert [epochs_logged(client, r, "val/acc") for r in children] == [[0], [0, 1]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlruns", "sweep"]
    for job in ("0", "1"):
        assert (sweep / job / "train_ddp_process_1.log").is_file()
        assert len(list((sweep / job).rglob("best.ckpt"))) == 1


@pytest.mark.slow
def test_a_failing_ddp_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    """Its processes stop together; rank 0 records why, and the other ends quietly, as
    Lightning would kill rank 0, and the sweep with it, when another process fails."""
    sweep = tmp_path / "sweep"
    overrides = ["optimizer.lr=1e30,1e-3", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}"]
    result = app(tmp_path, "-m", *overrides)
    assert result.returncode == 1, result.stderr[-3000:]  # a job failed
    assert "2 jobs (1 failed, 1 finished)" in result.stdout

    _, runs = runs_in(tmp_path)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [r.info.status for r in children] == ["FAILED", "FINISHED"]
    assert "the training loss is nan" in children[0].data.tags["error"]
