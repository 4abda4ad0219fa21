"""A user's own components plug in by `_target_` alone: chosen through the real Hydra app,
built and trained by the real pipeline, their options checked by their own check_options
before any MLflow run exists."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transferlab.builders import build_backbone_and_data
from transferlab.components import OptionError, number, whole_number
from transferlab.config import validate
from transferlab.config_keys import refuse_moved_overrides
from transferlab.errors import UserError
from transferlab.finetune.freezing import FreezeStrategy

HEAD = "head._target_=tests.test_components.ProjectionHead"
FREEZE = "freeze._target_=tests.test_components.OneStageFrozen"


class ProjectionHead(nn.Module):
    """A user's head: a scaled projection, with an option of its own."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 1.0):
        super().__init__()
        self.check_options(scale=scale)
        self.scale = scale
        self.projection = nn.Linear(in_features, num_classes)

    @staticmethod
    def check_options(scale: float) -> None:
        number("scale", scale, strict=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * self.projection(features)


class OneStageFrozen(FreezeStrategy):
    """A user's freeze strategy: only stage `stage` stays frozen (none built in does that)."""

    def __init__(self, stage: int = 0):
        self.check_options(stage=stage)
        self.stage = stage

    @staticmethod
    def check_options(stage: int) -> None:
        whole_number("stage", stage, 0)

    def frozen_stages(self, num_stages: int, epoch: int) -> set[int]:
        return {self.stage}


def test_a_users_head_and_freeze_strategy_train_by_target(
    train, runs, client, make_config, tmp_path
):
    overrides = [HEAD, "~head.dropout", "+head.scale=2.0", FREEZE]
    train(*overrides)
    (run,) = runs()
    assert run.info.status == "FINISHED"
    assert run.data.params["head._target_"] == "tests.test_components.ProjectionHead"
    best = client.download_artifacts(run.info.run_id, "checkpoints/best.ckpt", str(tmp_path))
    state = torch.load(best, weights_only=True)["state_dict"]
    assert state["head.projection.weight"].shape[0] == 10  # the user's head was trained
    initial, _ = build_backbone_and_data(make_config(*overrides))  # seeded: the same init
    names = {id(p): n for n, p in initial.network.named_parameters()}
    for stage in range(initial.num_stages):
        for param in initial.stage_parameters(stage):
            trained = state[f"backbone.network.{names[id(param)]}"]
            unchanged = torch.equal(trained, param.detach())
            assert unchanged == (stage == 0), (stage, names[id(param)])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([HEAD, "~head.dropout", "+head.scale=0"], "head.scale=0 must be > 0"),
        ([FREEZE, "+freeze.stage=-1"], "freeze.stage=-1 must be a whole number >= 0"),
        ([FREEZE, "+freeze.stages=1"], "freeze.stages is unknown (did you mean stage?)"),
    ],
)
def test_a_users_component_checks_its_own_options_before_any_run(train, runs, overrides, message):
    with pytest.raises(UserError) as error:
        train(*overrides)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)
    assert runs() == []


def test_an_option_error_names_the_group_only_where_it_is_known():
    with pytest.raises(OptionError) as error:
        OneStageFrozen(stage=1.5)
    assert str(error.value) == "stage=1.5 must be a whole number >= 0"
    assert str(error.value.under("freeze")) == "freeze.stage=1.5 must be a whole number >= 0"


@pytest.mark.parametrize("group", ["head", "freeze", "regularizer"])
def test_the_old_name_key_is_refused_naming_the_new_way(make_config, group):
    expected = f"{group}.name has moved: use {group}=<option> or {group}._target_"
    with pytest.raises(UserError, match=expected):
        refuse_moved_overrides([f"{group}.name=mlp"])  # as typed: Hydra would not compose it
    with pytest.raises(UserError, match=expected):
        validate(make_config(f"+{group}.name=mlp"))  # a config that still holds it
