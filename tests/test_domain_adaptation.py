"""Unsupervised domain adaptation end to end: printed digits (labelled) -> handwritten digits
(unlabelled), through the real Hydra app and a real MLflow store. What is checked is what
the methods and the selection do: the target's labels never reach training or (but for
the oracle) model selection, the adaptation loss changes the network, and the checkpoint,
early stopping and objective follow `adapt.selection`."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from transferlab.builders import build_trainer
from transferlab.config import validate
from transferlab.errors import UserError
from transferlab.stage_configs import source_config
from transferlab.train import run as run_task

SEEN: list = []  # what the module's training step received, by TrainingBatchSpy


class TrainingBatchSpy(pl.Callback):
    """Records the batches exactly as the training step gets them."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        SEEN.append(batch)


@pytest.fixture
def adaptation(tmp_path):
    """The adaptation task, small: 40 printed images per digit, handwritten target."""
    return [
        "dataset=printed_digits",
        "dataset.per_class=40",
        f"dataset.cache_dir='{tmp_path / 'printed'}'",
        "target_domain=digits",
        "loader.batch_size=32",
    ]


def metrics_of(run) -> dict[str, float]:
    return run.data.metrics


def test_target_batches_reach_the_step_without_labels(train, runs, adaptation):
    SEEN.clear()
    train(
        *adaptation,
        "adapt=dann",
        "+callbacks.spy._target_=tests.test_domain_adaptation.TrainingBatchSpy",
    )
    assert SEEN, "the spy saw no batch"
    for batch in SEEN:
        images, labels = batch["source"]
        (target,) = batch["target"]  # images alone: no second tensor, no labels
        assert labels.dtype == torch.long and len(labels) == len(images)
        assert target.shape[1:] == images.shape[1:] and target.is_floating_point()
        assert len(target) == len(images)
    (run,) = runs()
    metrics = metrics_of(run)
    assert run.data.tags["transferlab.selection"] == "source_val"
    for name in ("target/test/acc", "source/val/acc", "target/val/entropy", "target/val/dev"):
        assert name in metrics, name
    assert "target/val/acc" not in metrics  # not the oracle: its labels were never read
    assert metrics["train/adapt"] > 0  # the discriminator's cross-entropy, log 2 at chance
    assert 0 <= metrics["adapt/a_distance_before"] <= 2
    assert 0 <= metrics["adapt/a_distance_after"] <= 2
    assert metrics["source/val/acc"] == metrics["val/acc"]


def test_the_adaptation_loss_changes_what_the_network_learns(train, runs, adaptation):
    """Same seed, same batches (target ones included): only the weight of DANN's loss
    differs, and with it the trained network and its target predictions."""
    train(*adaptation, "adapt=dann", "adapt.weight=0.0")
    train(*adaptation, "adapt=dann", "adapt.weight=1.0")
    unweighted, weighted = (metrics_of(run) for run in runs())
    assert unweighted["train/adapt"] != weighted["train/adapt"]
    assert unweighted["target/val/entropy"] != weighted["target/val/entropy"]


@pytest.mark.parametrize("selection", ["entropy", "dev"])
def test_an_unsupervised_selection_picks_the_checkpoint_and_is_the_objective(
    train, runs, adaptation, selection
):
    objective = train(*adaptation, "adapt=mcc", f"adapt.selection={selection}")
    (run,) = runs()
    metrics = metrics_of(run)
    assert f"target/val/{selection}_best" in metrics and "val/acc_best" not in metrics
    assert objective == pytest.approx(metrics[f"target/val/{selection}_best"])
    assert run.data.params["adapt.selection"] == selection


@pytest.mark.parametrize(
    ("selection", "checkpoint", "stopping"),
    [
        ("source_val", ("val/acc", "max"), ("val/loss", "min")),
        ("entropy", ("target/val/entropy", "min"), ("target/val/entropy", "min")),
        ("dev", ("target/val/dev", "min"), ("target/val/dev", "min")),
        ("oracle", ("target/val/acc", "max"), ("target/val/loss", "min")),
    ],
)
def test_the_checkpoint_and_early_stopping_watch_what_the_selection_says(
    make_config, tmp_path, adaptation, selection, checkpoint, stopping
):
    cfg = make_config(*adaptation, "adapt=mcc", f"adapt.selection={selection}")
    trainer = build_trainer(cfg, False, tmp_path, "32-true")
    watched = {
        kind: (callback.monitor, callback.mode)
        for callback in trainer.callbacks
        for kind in (ModelCheckpoint, EarlyStopping)
        if type(callback) is kind
    }
    assert watched == {ModelCheckpoint: checkpoint, EarlyStopping: stopping}


def test_the_oracle_reads_target_labels_and_is_tagged_as_such(train, runs, adaptation):
    objective = train(*adaptation, "adapt=mmd", "adapt.selection=oracle")
    (run,) = runs()
    metrics = metrics_of(run)
    assert run.data.tags["transferlab.selection"] == "oracle"
    assert objective == pytest.approx(metrics["target/val/acc_best"])
    assert 0 <= metrics["target/val/acc"] <= 1


def test_source_only_baseline_trains_on_source_batches_alone(train, runs, adaptation):
    SEEN.clear()
    spy = "+callbacks.spy._target_=tests.test_domain_adaptation.TrainingBatchSpy"
    train(*adaptation, spy)  # adapt=none: the source-only baseline, scored on the target
    assert all(isinstance(batch, list | tuple) and len(batch) == 2 for batch in SEEN)
    (run,) = runs()
    assert "target/test/acc" in metrics_of(run) and "train/adapt" not in metrics_of(run)
    assert run.info.run_name.endswith("-source_only-source_val")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset=printed_digits", "adapt=dann"], "adapt=DANN adapts to a target domain, but"),
        (
            ["target_domain=digits", "adapt=dann", "optimize_metric=target/test/acc"],
            "optimize_metric='target/test/acc' reads the target domain's labels",
        ),
        (
            [
                "target_domain=digits",
                "adapt=dann",
                "callbacks.model_checkpoint.monitor=target/val/acc",
            ],
            "callbacks.model_checkpoint.monitor='target/val/acc' reads the target domain's labels",
        ),
        (["adapt.selection=dev"], "adapt.selection=dev reads a target domain, but there is none"),
        (
            ["target_domain=digits", "adapt=mcc", "adapt.selection=best"],
            "adapt.selection='best' is unknown",
        ),
        (
            ["target_domain=digits", "target_domain.task.classes=[0,1,2]", "adapt=mcc"],
            "the target domain's classes ['0', '1', '2'] are not the dataset's",
        ),
        (["target_domain=digits", "head=logreg", "freeze=linear_probe"], "head=logreg is fitted"),
    ],
)
def test_bad_adaptation_input_is_one_line_before_any_run(make_config, runs, overrides, message):
    with pytest.raises(UserError) as refused:
        run_task(make_config("~callbacks.progress_bar", *overrides))
    assert str(refused.value).startswith(message), str(refused.value)
    assert "\n" not in str(refused.value)
    assert runs() == []  # nothing recorded, so nothing left RUNNING


def test_optuna_tunes_the_adaptation_weight_by_the_unsupervised_objective(
    multirun, runs, adaptation
):
    code = multirun(
        *adaptation,
        "adapt=mcc",
        "adapt.selection=entropy",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.seed=0",
        "adapt.weight=interval(0.1, 2.0)",
    )
    assert code == 0
    found = runs()
    parent = next(r for r in found if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2
    weights = {float(child.data.params["adapt.weight"]) for child in children}
    assert len(weights) == 2
    best = min(children, key=lambda r: r.data.metrics["target/val/entropy_best"])
    assert parent.data.tags.get("transferlab.best_run_id") == best.info.run_id
    assert torch.isfinite(torch.tensor(best.data.metrics["target/test/acc"]))


def test_a_source_stage_adapts_to_nothing_and_the_run_to_its_target(make_config, adaptation):
    cfg = make_config(*adaptation, "adapt=dann", "source=digits_0_4")
    validate(cfg)  # the source stage passes the same checks
    source = source_config(cfg)
    assert source.adapt._target_ is None and source.target_domain._target_ is None
    assert cfg.adapt._target_.endswith("DANN") and cfg.target_domain._target_.endswith("Digits")


def test_lora_with_dann_checkpoints_the_discriminator_beside_the_adapter(
    train, tmp_path, adaptation
):
    """A parameter-efficient checkpoint keeps what trained: with DANN that includes the
    domain discriminator (resume and the tested checkpoint need it), never the base."""
    train(*adaptation, "backbone=vit_tiny_p4", "freeze=lora", "adapt=dann", "trainer.max_epochs=1")
    (best,) = tmp_path.glob("outputs/**/checkpoints/best.ckpt")
    saved = torch.load(best, weights_only=True)["state_dict"]
    assert any(key.startswith("adaptation.discriminator.") for key in saved)
    assert any("lora_" in key for key in saved)
    assert "backbone.network.conv_proj.weight" not in saved  # the frozen base: by its sha256


def test_a_swept_study_group_is_recorded_and_names_the_report_s_bars(
    multirun, runs, adaptation, client, tmp_path
):
    """experiments/domain_method is the study's own config group: swept, each run records
    its choice as a param, and the report's bars are named by it alone (dataset and adapt
    follow from it), the declared source-only baseline marked."""
    from transferlab.report_plots import write_plots
    from transferlab.report_study import build_study, select_runs

    code = multirun(  # the shipped study, as it declares its figure, on 2 methods x 2 seeds
        *[o for o in adaptation if not o.startswith("dataset=")],  # domain_method sets it
        "domain_method=source_only,mmd",
        "seed=0,1",
        config_name="domain_adaptation",
    )
    assert code == 0
    found = runs()
    (parent,) = [r for r in found if r.data.tags["transferlab.role"] == "sweep"]
    jobs = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    recorded = sorted(r.data.params["domain_method"] for r in jobs)
    assert recorded == ["mmd", "mmd", "source_only", "source_only"]
    title, selected, _ = select_runs(client, parent.info.run_id)
    bars, _ = (drawn.data for drawn in write_plots(client, build_study(title, selected), tmp_path))
    assert {s.label: (s.baseline, s.points[0].n) for s in bars.series} == {
        "source_only": (True, 2),
        "mmd": (False, 2),
    }
