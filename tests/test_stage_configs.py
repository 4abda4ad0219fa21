"""The configs a run derives (its source stage, its scratch baseline) follow their own keys:
merged first, resolved after, validated like the main one; and one list of keys that cannot
change a result, shared by the reuse key, resume, rerun and the report."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from transferlab.errors import UserError
from transferlab.objective import changes_result, direction, lower_is_better
from transferlab.stage_configs import config_key, scratch_config, source_config
from transferlab.tracking.redaction import recorded_experiment
from transferlab.train import run as run_task


def test_the_source_stage_schedule_spans_its_own_epochs(make_config):
    cfg = make_config(config_name="digits_transfer")
    source = source_config(cfg)
    assert source.trainer.max_epochs == 15  # conf/source/digits_0_4.yaml
    assert source.scheduler.T_max == source.trainer.max_epochs
    target = OmegaConf.to_container(cfg, resolve=True)
    assert target["scheduler"]["T_max"] == target["trainer"]["max_epochs"] == 200


def test_the_source_reuse_key_ignores_the_target_budget_and_bookkeeping(make_config):
    key = config_key(source_config(make_config(config_name="digits_transfer")))
    for overrides in (
        ["trainer.max_epochs=12"],  # the target's budget: the source sets its own
        ["checkpoint.every_n_epochs=3"],
        ["~callbacks.progress_bar"],
        ["compare_scratch=false", "scratch.trainer.max_epochs=7"],
    ):
        cfg = make_config(*overrides, config_name="digits_transfer")
        assert config_key(source_config(cfg)) == key, overrides
    changed = make_config("optimizer.lr=0.01", config_name="digits_transfer")
    assert config_key(source_config(changed)) != key


def test_the_scratch_baseline_has_its_own_budget_and_schedule(make_config):
    cfg = make_config(config_name="digits_transfer")
    scratch = scratch_config(cfg)
    assert scratch.trainer.max_epochs == 200  # a generous cap: early stopping ends it
    assert scratch.scheduler.T_max == 200
    assert scratch.callbacks.early_stopping.monitor == "val/loss"
    own = scratch_config(
        make_config(
            "scratch.trainer.max_epochs=30",
            "+scratch.optimizer.lr=0.003",
            config_name="digits_transfer",
        )
    )
    assert (own.trainer.max_epochs, own.scheduler.T_max, own.optimizer.lr) == (30, 30, 0.003)
    assert own.backbone.weights_path is None
    assert own.freeze._target_ == "transferlab.finetune.freezing.FullFineTune"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+source.trainer.max_epoch=3",
            "source stage (the config with source.* merged in): trainer.max_epoch is unknown "
            "(did you mean max_epochs?)",
        ),
        (
            "+scratch.optimizer.lr=-1",
            "scratch stage (the config with scratch.* merged in): optimizer.lr=-1 must be > 0",
        ),
        (
            "scratch.trainer.max_epochs=0",
            "scratch stage (the config with scratch.* merged in): trainer.max_epochs=0",
        ),
    ],
)
def test_derived_stage_configs_are_validated_before_any_run(make_config, runs, override, message):
    with pytest.raises(UserError) as refused:
        run_task(make_config(override, config_name="digits_transfer"))
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)
    assert runs() == []  # refused before any MLflow run existed


def test_a_recorded_experiment_keeps_references_for_its_stages_to_resolve(make_config):
    recorded = recorded_experiment(make_config(config_name="digits_transfer"))
    raw = OmegaConf.to_container(recorded)
    assert raw["scheduler"]["T_max"] == "${trainer.max_epochs}"
    assert not OmegaConf.is_interpolation(recorded, "output_dir")  # ${hydra:...} resolved
    assert source_config(recorded).scheduler.T_max == 15  # a rerun derives it again


def test_one_list_says_what_cannot_change_a_result():
    for key in (
        "tracking.uri",
        "checkpoint.every_n_epochs",
        "callbacks.progress_bar",
        "output_dir",
    ):
        assert not changes_result(key), key
    assert not changes_result("hydra/launcher")
    for key in ("optimizer.lr", "callbacks.early_stopping.patience", "trainer.max_epochs"):
        assert changes_result(key), key


@pytest.mark.parametrize(
    ("metric", "lower"),
    [
        ("val/acc", False),
        ("test/acc", False),
        ("scratch/test/acc_gain", False),
        ("inference/images_per_s", False),
        ("val/loss", True),
        ("test/loss", True),
        ("time/fit_s", True),
        ("inference/latency_ms_single", True),
        ("model/size_mb", True),
        ("model/params_trainable", True),
    ],
)
def test_the_direction_of_an_objective_follows_its_name(metric, lower):
    assert lower_is_better(metric) is lower
    assert direction(metric) == ("minimize" if lower else "maximize")
