"""Whole runs through the real task function, tracked in a real sqlite MLflow store."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from mlflow.artifacts import download_artifacts

from tests.helpers import write_image_folder
from transferlab.errors import UserError
from transferlab.models.backbones import build_backbone


def only_run(runs):
    found = runs()
    assert len(found) == 1, [r.info.run_name for r in found]
    return found[0]


def metric_history(client, run, key):
    return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]


def test_a_run_records_params_metrics_artifacts_and_tags(train, runs, client, tracking_uri):
    objective = train("backbone=small_cnn", "freeze=partial", "freeze.k=1", "optimizer=sgd")
    run = only_run(runs)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "small_cnn-partial-sgd"
    params = run.data.params
    assert params["backbone"] == "small_cnn" and params["freeze"] == "partial"
    assert params["optimizer"] == "sgd" and params["scheduler"] == "cosine"
    assert params["dataset"] == "digits" and params["seed"] == "42"
    assert params["optimizer.lr"] == "0.01" and params["freeze.k"] == "1"
    metrics = run.data.metrics
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"):
        assert key in metrics
    assert objective == metrics["val/acc_best"]
    assert [step for step, _ in metric_history(client, run, "val/acc")] == [0, 1]
    tags = run.data.tags
    assert tags["mlflow.source.type"] == "LOCAL"  # the UI's Source column: the program
    assert tags["mlflow.source.name"] == Path(sys.argv[0]).name
    for key in (
        "mlflow.source.git.commit",
        "git.dirty",
        "command",
        "device",
        "version.torch",
        "version.torchvision",
        "version.pytorch-lightning",
        "version.hydra-core",
        "version.mlflow",
    ):
        assert key in tags, key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "overrides.yaml", "checkpoints", "test", "backbone.pt"} <= artifacts
    test_files = {a.path for a in client.list_artifacts(run.info.run_id, "test")}
    assert test_files == {"test/confusion_matrix.png", "test/per_class_report.txt"}
    report = download_artifacts(
        run_id=run.info.run_id, artifact_path="test/per_class_report.txt", tracking_uri=tracking_uri
    )
    assert "precision" in Path(report).read_text()


def test_same_config_and_seed_give_identical_metrics(train, runs):
    train("seed=3")
    train("seed=3")
    first, second = runs()
    for key in ("val/acc", "test/loss", "test/acc", "train/loss"):
        assert first.data.metrics[key] == second.data.metrics[key], key


@pytest.mark.parametrize("cache", [True, False])
def test_linear_probe_changes_only_the_head(train, runs, client, tracking_uri, cache):
    train("freeze=linear_probe", f"feature_cache.enabled={cache}")
    run = only_run(runs)

    def artifact(path):
        local = download_artifacts(
            run_id=run.info.run_id, artifact_path=path, tracking_uri=tracking_uri
        )
        return torch.load(local, weights_only=True)

    trained = artifact("checkpoints/best.ckpt")["state_dict"]
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    if cache:  # the head trained on cached features: the backbone never ran in fit
        assert not any(k.startswith("backbone.network.") for k in trained)
        assert "backbone.pt" not in logged  # unchanged: it is the source's
        return
    backbone = artifact("backbone.pt")
    for key, value in initial_small_cnn().items():
        assert torch.equal(backbone[key], value), key  # BatchNorm statistics too
        assert torch.equal(trained[f"backbone.network.{key}"], value), key
    assert torch.equal(trained["head.linear.weight"], backbone["classifier.weight"])


def test_partial_freezes_the_first_k_stages(train, tmp_path):
    train("freeze=partial", "freeze.k=2")
    trained = torch.load(tmp_path / "outputs" / "finetune" / "backbone.pt", weights_only=True)
    initial = initial_small_cnn()
    for stage in range(3):
        keys = [k for k in initial if k.startswith(f"features.{stage}.")]
        unchanged = all(torch.equal(trained[k], initial[k]) for k in keys)
        assert unchanged == (stage < 2), stage


def initial_small_cnn() -> dict:
    """The weights a run with seed 42 starts from: it seeds, then builds the backbone."""
    torch.manual_seed(42)
    return build_backbone("small_cnn").network.state_dict()


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [
        (["scheduler=none"], [1e-3] * 3),
        (["scheduler=cosine"], [1e-3 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)]),
        (["scheduler=step", "scheduler.step_size=2"], [1e-3, 1e-3, 1e-4]),  # cut after 2 epochs
    ],
    ids=["none", "cosine", "step"],
)
def test_each_scheduler_sets_the_rate_of_each_epoch(train, runs, client, scheduler, expected):
    """`plateau`, which depends on val/loss, is in test_effects.py."""
    train(*scheduler, "freeze=linear_probe", "optimizer=adam", "trainer.max_epochs=3")
    rates = [v for _, v in metric_history(client, only_run(runs), "lr-Adam/head")]
    assert rates == pytest.approx(expected, rel=1e-9)


def test_image_folder_run_end_to_end(train, runs, tmp_path):
    root = write_image_folder(tmp_path / "imgs", {"a": 12, "b": 12, "c": 12})
    train(
        "dataset=image_folder",
        f"dataset.root={root}",
        "backbone.input_size=12",
        "loader.batch_size=16",
        "loader.epoch_samples=128",
        "trainer.max_epochs=3",
    )
    run = only_run(runs)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/acc"] > 0.5  # three easy classes, chance is 1/3


def test_error_before_training_marks_the_run_failed(train, runs, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        train(f"backbone.weights_path={tmp_path / 'nope.pt'}")
    run = only_run(runs)
    assert run.info.status == "FAILED"
    assert "does not exist" in run.data.tags["error"]


def test_freeze_k_beyond_the_stages_fails_before_training(train, runs):
    with pytest.raises(UserError, match=r"freeze.k=9 is beyond small_cnn's 3 stages; use 0 to 3"):
        train("freeze=partial", "freeze.k=9")
    assert only_run(runs).info.status == "FAILED"


def test_error_during_training_marks_the_run_failed(train, runs):
    with pytest.raises(RuntimeError, match="disk on fire"):
        train("+callbacks.fail._target_=tests.helpers.FailAfterFirstEpoch")
    run = only_run(runs)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: disk on fire"


def test_ctrl_c_marks_the_run_killed(train, runs):
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train("+callbacks.stop._target_=tests.helpers.InterruptAfterFirstEpoch")
    assert only_run(runs).info.status == "KILLED"


def test_user_config_dir_and_own_backbone_and_dataset(train, runs, tmp_path):
    conf = tmp_path / "myconf"
    (conf / "backbone").mkdir(parents=True)
    (conf / "dataset").mkdir()
    (conf / "backbone" / "tiny.yaml").write_text(
        "_target_: tests.helpers.tiny_backbone\nwidth: 6\n"
    )
    (conf / "dataset" / "my_digits.yaml").write_text(
        "defaults: [/base_dataset@_here_, _self_]\n"  # the task keys, as every dataset option
        "_target_: tests.helpers.UserDigits\nscale: 2.0\ntask: {classes: [0, 1, 2]}\n"
    )
    train(f"hydra.searchpath=[file://{conf}]", "backbone=tiny", "dataset=my_digits")
    run = only_run(runs)
    assert run.info.status == "FINISHED"
    assert run.data.params["backbone"] == "tiny" and run.data.params["backbone.width"] == "6"
    assert run.data.params["dataset"] == "my_digits"
