"""Frozen backbones: features computed once and cached across runs; scikit-learn heads."""

from __future__ import annotations

from pathlib import Path

import pytest

import transferlab.frozen
from transferlab.data.feature_cache import extract_features


@pytest.fixture
def backbone_runs(monkeypatch) -> list:
    """Counts the backbone passes over a split (the real extraction still runs)."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[1])
        return extract_features(*args, **kwargs)

    monkeypatch.setattr(transferlab.frozen, "extract_features", counted)
    return calls


def test_later_linear_probe_runs_never_run_the_backbone(make_config, runs, backbone_runs, tmp_path):
    from transferlab.train import run

    cache = tmp_path / "cache"
    common = ["freeze=linear_probe", "trainer.max_epochs=2", "~callbacks.progress_bar",
              f"feature_cache.dir={cache}", "dataset.task.split_seed=7"]  # fmt: skip
    run(make_config(*common, "optimizer.lr=1e-3"))
    assert len(backbone_runs) == 3  # train, val, test: once each
    run(make_config(*common, "optimizer.lr=1e-2", "head=mlp"))
    run(make_config(*common, "head=logreg"))
    assert len(backbone_runs) == 3  # later trials read the cache
    assert len(list(Path(cache).glob("*.pt"))) == 3
    run(make_config(*common, "dataset.task.split_seed=8"))  # other features: computed anew
    assert len(backbone_runs) == 6
    assert all(r.info.status == "FINISHED" for r in runs())


@pytest.mark.parametrize(
    ("head", "loss_kind"), [("svm", "hinge"), ("svm-rbf", "hinge"), ("logreg", "log")]
)
def test_sklearn_heads_log_the_metrics_of_neural_heads(train, runs, client, head, loss_kind):
    name, _, kernel = head.partition("-")
    extra = [f"head.kernel={kernel}"] if kernel else []
    train("freeze=linear_probe", f"head={name}", *extra, "dataset.task.train_per_class=30")
    (run,) = runs()
    assert run.info.status == "FINISHED"
    assert run.data.params["head"] == name
    metrics = run.data.metrics
    for key in ("train/acc", "train/loss", "val/acc", "val/loss", "test/acc", "test/loss"):
        assert key in metrics
    assert metrics["test/acc"] > 0.3  # random-init features, 30 images a class
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    head_class = {"svm": "SVMHead", "logreg": "LogisticRegressionHead"}[name]
    assert artifacts == {f"model/{head_class}.skops"}
    tests = {a.path for a in client.list_artifacts(run.info.run_id, "test")}
    assert "test/confusion_matrix.png" in tests
