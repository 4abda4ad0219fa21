"""transferlab-rank on real candidates (issue 13): three small_cnn sources ranked on digits 5-9
through the real config, feature cache and sqlite MLflow store, in-process; the bad input a
ranking refuses before (or without) leaving a RUNNING run; one real `--help`."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from scipy.stats import pearsonr, weightedtau
from torch import nn
from torch.utils.data import TensorDataset

from tests.conftest import PYTHON
from transferlab import rank, report
from transferlab.data.datasets import DatasetParts, Digits, LabelledImages
from transferlab.errors import UserError
from transferlab.models.small_cnn import SmallCNN
from transferlab.rank_validation import CANDIDATE_TAG
from transferlab.report_ranking import SKIPPED_TAG

TARGET = "dataset.task.classes=[5,6,7,8,9]"


class NaNDigits:
    """The digits with every pixel NaN (a broken decoder): features no score can read."""

    def identity(self) -> dict:
        return {"name": "nan_digits"}

    def load(self, preprocessing) -> DatasetParts:
        parts = Digits().load(preprocessing)
        images, labels = parts.parts["train"].dataset.tensors
        nan = TensorDataset(torch.full_like(images, float("nan")), labels)
        train = LabelledImages(nan, parts.parts["train"].targets)
        return DatasetParts({"train": train}, parts.class_names)


class OneClassDigits:
    """The digits' zeros alone: a target of one class."""

    def identity(self) -> dict:
        return {"name": "one_class_digits"}

    def load(self, preprocessing) -> DatasetParts:
        parts = Digits().load(preprocessing)
        images, labels = parts.parts["train"].dataset.tensors
        zeros = labels == 0
        kept = TensorDataset(images[zeros], labels[zeros])
        return DatasetParts({"train": LabelledImages(kept, labels[zeros].numpy())}, ["0"])


@pytest.fixture(scope="module")
def trained_weights(tmp_path_factory) -> str:
    """A small_cnn state dict trained briefly on digits 0-4 (the source task), as a user's
    file: its features should transfer to digits 5-9 better than a random init's."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    source = digits.target < 5
    images = torch.tensor(digits.images[source] / 16.0, dtype=torch.float32).unsqueeze(1)
    images = images.expand(-1, 3, -1, -1)
    labels = torch.tensor(digits.target[source])
    network = SmallCNN(num_classes=5)
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    for _ in range(3):
        for batch in torch.randperm(len(labels)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(network(images[batch]), labels[batch]).backward()
            optimizer.step()
    path = tmp_path_factory.mktemp("source") / "digits_0_4.pt"
    torch.save(network.state_dict(), path)
    return str(path)


@pytest.fixture
def ranking(make_config, tmp_path):
    """Runs transferlab-rank's task on a config composed from conf/rank.yaml."""

    def run(*overrides: str):
        cfg = make_config(
            f"feature_cache.dir='{tmp_path / 'cache'}'", *overrides, config_name="rank"
        )
        return rank.run(cfg)

    return run


def candidates(*specs: str) -> str:
    return f"rank.candidates=[{','.join(specs)}]"


def test_ranking_scores_each_candidate_in_a_child_run_and_names_the_one_that_fails(
    ranking, runs, trained_weights, tmp_path, capsys, tracking_uri
):
    missing = tmp_path / "missing.pt"
    given = candidates(
        "small_cnn",
        f"{{backbone:small_cnn,weights_path:'{trained_weights}',name:trained}}",
        f"{{backbone:small_cnn,weights_path:'{missing}',name:broken}}",
    )
    ranking(given, TARGET)
    (parent,) = [r for r in runs() if r.data.tags["transferlab.role"] == "ranking"]
    assert parent.info.status == "FINISHED"
    children = {
        r.info.run_name: r
        for r in runs()
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(children) == {"small_cnn", "trained", "broken"}
    broken = children["broken"]
    assert broken.info.status == "FAILED"
    assert "rank.candidates[2] could not be loaded" in broken.data.tags["error"]
    assert str(missing) in broken.data.tags["error"]
    assert "candidate broken failed: rank.candidates[2] could not" in capsys.readouterr().err
    random, trained = children["small_cnn"].data, children["trained"].data
    for run in (random, trained):
        assert run.metrics["rank/feature_dim"] == 128
        assert run.metrics["rank/extract_s"] > 0 and run.metrics["rank/score_s"] > 0
        for score in ("logme", "hscore", "shrinkage_hscore", "transrate"):
            assert np.isfinite(run.metrics[f"rank/{score}"]), score
    assert trained.metrics["rank/logme"] > random.metrics["rank/logme"]
    assert {"rank/nce", "rank/leep"} <= set(trained.metrics)  # its own source classifier
    assert not {"rank/nce", "rank/leep"} & set(random.metrics)
    assert "nce, leep skipped: no source classifier" in random.tags[SKIPPED_TAG]

    path = report.write_report(parent.info.run_id, tmp_path / "report", tracking_uri)
    text = path.read_text()
    logme = text.split("## Ranked by logme (best first)")[1].split("##")[0]
    rows = [line for line in logme.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split(" | ")[1] for row in rows[1:]] == ["trained", "small_cnn", "broken"]
    assert "| 1 | trained |" in rows[1] and "| 128 |" in rows[1]

    cache = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(cache) == 2  # one train split per candidate that loaded
    written = {p: p.stat().st_mtime_ns for p in cache}
    ranking(given, TARGET)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.pt")} == written


def test_a_ranking_refuses_bad_input_in_one_line_and_leaves_no_run_running(ranking, runs):
    one = candidates("small_cnn")
    with pytest.raises(UserError, match=r"rank.candidates=\[small_cnn\] must list at least 2"):
        ranking(one)
    unknown = candidates("small_cnn", "resnet_19")
    with pytest.raises(UserError, match=r"rank.candidates\[1\]=resnet_19 is no backbone option"):
        ranking(unknown)
    twice = candidates("small_cnn", "{backbone:small_cnn}")
    with pytest.raises(UserError, match=r"rank.candidates\[1\] is named small_cnn, as"):
        ranking(twice)
    with pytest.raises(UserError, match=r"rank.scores=\[logmee\] must list scores of"):
        ranking(candidates("small_cnn", "timm:resnet18"), "rank.scores=[logmee]")
    two = candidates("small_cnn", "{backbone:small_cnn,name:other}")
    with pytest.raises(UserError, match=r"train split holds 1 class \['0'\]") as one_class:
        ranking(two, "dataset._target_=tests.test_rank.OneClassDigits")
    assert runs() == []  # all of the above: before any run
    with pytest.raises(UserError, match="no candidate could be scored") as nan:
        ranking(two, "dataset._target_=tests.test_rank.NaNDigits")
    assert "small_cnn's features on the train split hold" in str(nan.value)
    for error in (one_class, nan):
        assert "\n" not in str(error.value)
    statuses = {r.info.run_name: r.info.status for r in runs()}
    assert statuses == {"ranking": "FAILED", "small_cnn": "FAILED", "other": "FAILED"}


def test_validation_fine_tunes_each_candidate_per_seed_and_logs_how_each_score_agrees(
    ranking, runs, trained_weights, tmp_path, tracking_uri
):
    given = candidates(
        "small_cnn",
        f"{{backbone:small_cnn,weights_path:'{trained_weights}',name:trained}}",
        "{backbone:small_cnn,input_size:16,name:random16}",
    )
    method = (
        "rank.finetune=['freeze=linear_probe','trainer.max_epochs=2','~callbacks.progress_bar']"
    )
    few = "dataset.task.train_per_class=5"  # N=25 <= D=128: H-score is C-1=4 for every one
    ranking(given, TARGET, few, "rank.validate=true", "rank.seeds=[1,2]", method)
    (parent,) = [r for r in runs() if r.data.tags["transferlab.role"] == "ranking"]
    children = [r for r in runs() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    scored = {r.info.run_name: r for r in children if r.data.tags["transferlab.role"] != "finetune"}
    tuned = [r for r in children if r.data.tags["transferlab.role"] == "finetune"]
    assert len(tuned) == 6 and all(r.info.status == "FINISHED" for r in tuned)
    accuracies: dict[str, list[float]] = {}
    for run in tuned:
        assert run.data.params["seed"] in ("1", "2")
        assert run.data.params["freeze._target_"].endswith("LinearProbe")
        accuracies.setdefault(run.data.tags[CANDIDATE_TAG], []).append(run.data.metrics["test/acc"])
    assert {name: len(accs) for name, accs in accuracies.items()} == dict.fromkeys(scored, 2)
    trained_run = next(r for r in tuned if r.data.tags[CANDIDATE_TAG] == "trained")
    assert trained_run.data.params["backbone.weights_path"] == trained_weights
    means = {name: np.mean(accs) for name, accs in accuracies.items()}
    for name, run in scored.items():
        assert run.data.metrics["rank/finetune_acc"] == pytest.approx(means[name])
        expected_std = np.std(accuracies[name], ddof=1)
        assert run.data.metrics["rank/finetune_acc_std"] == pytest.approx(expected_std)
    names = sorted(scored)
    metrics = parent.data.metrics
    for score in ("logme", "shrinkage_hscore", "transrate"):
        xs = [scored[n].data.metrics[f"rank/{score}"] for n in names]
        ys = [means[n] for n in names]
        tau = weightedtau(xs, ys).statistic
        assert metrics[f"rank/{score}/kendall_tau"] == pytest.approx(tau, abs=1e-9)
        assert metrics[f"rank/{score}/pearson_r"] == pytest.approx(pearsonr(xs, ys).statistic)
    hscores = [scored[n].data.metrics["rank/hscore"] for n in names]
    assert hscores == pytest.approx([4.0] * 3, abs=1e-9)  # equal but for rounding: no tau
    assert np.isnan(metrics["rank/hscore/kendall_tau"]) and np.isnan(
        metrics["rank/hscore/pearson_r"]
    )
    assert "rank/nce/kendall_tau" not in metrics  # one candidate alone has a source classifier
    assert metrics["rank/finetune_fit_s"] > 0 and metrics["rank/rank_s"] > 0
    artifacts = {
        a.path for a in MlflowClient(tracking_uri).list_artifacts(parent.info.run_id, "validation")
    }
    assert "validation/logme_vs_finetuned_acc.png" in artifacts

    text = report.write_report(parent.info.run_id, tmp_path / "report", tracking_uri).read_text()
    assert "## Validation: each score against the mean fine-tuned test/acc" in text
    tau = metrics["rank/logme/kendall_tau"]
    assert f"| logme | {tau:.4f} |" in text
    trained = scored["trained"].data.metrics
    mean_std = f"{trained['rank/finetune_acc']:.4f} ± {trained['rank/finetune_acc_std']:.4f}"
    assert f"| trained | {trained['rank/logme']:.4f} | {mean_std} |" in text


def test_validation_refuses_a_bad_method_before_any_run(ranking, runs):
    two = candidates("small_cnn", "{backbone:small_cnn,name:other}")
    with pytest.raises(UserError, match=r"rank.seeds=\[\] must be a non-empty list"):
        ranking(two, "rank.validate=true", "rank.seeds=[]")
    with pytest.raises(UserError, match=r"rank.finetune=\['freeze=frozen'\] cannot be composed"):
        ranking(two, "rank.validate=true", "rank.finetune=['freeze=frozen']")
    with pytest.raises(UserError, match=r"rank.finetune of rank.candidates\[0\] \(small_cnn\): "):
        ranking(two, "rank.validate=true", "rank.finetune=['optimizer.lr=-1']")
    assert runs() == []


@pytest.mark.slow
def test_rank_help_answers_from_the_console_script():
    result = subprocess.run(
        [PYTHON, "-m", "transferlab.rank", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "transferlab-rank: rank candidate source backbones" in result.stdout
    assert "candidates: ???" in result.stdout
