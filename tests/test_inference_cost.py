"""Inference cost: parameter counts, size and latency logged with every neural-head run."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from transferlab.errors import instantiate
from transferlab.finetune.freezing import FullFineTune, Gradual, Partial
from transferlab.models.inference_cost import (
    Classifier,
    InferenceSetting,
    inference_cost,
    parameter_counts,
    state_dict_megabytes,
)

COST_METRICS = (
    "model/params_total",
    "model/params_trainable",
    "model/size_mb",
    "inference/latency_ms_single",
    "inference/latency_ms_batch",
    "inference/images_per_s",
)


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_every_neural_run_logs_its_cost_counted_on_the_real_backbone(train, runs, make_config):
    """One call, two runs: the scratch baseline trains everything, the linear probe only its
    head, on cached features (its module holds no backbone; the cost must count the real one)."""
    train("freeze=linear_probe", "compare_scratch=true")
    by_role = {r.data.tags["transferlab.role"]: r for r in runs()}
    probe, scratch = by_role["finetune"], by_role["scratch"]
    cfg = make_config()
    backbone = instantiate(cfg.backbone)
    head = instantiate(cfg.head, in_features=backbone.feature_dim, num_classes=10)
    total = _numel(backbone.network) + _numel(head)
    for run in (probe, scratch):
        metrics = run.data.metrics
        assert all(metrics[key] > 0 for key in COST_METRICS), metrics
        assert metrics["model/params_total"] == total
        assert metrics["inference/images_per_s"] == pytest.approx(
            64 / metrics["inference/latency_ms_batch"] * 1e3
        )
        assert run.data.tags["transferlab.inference_device"].startswith("cpu (")
    assert scratch.data.metrics["model/params_trainable"] == total
    assert probe.data.metrics["model/params_trainable"] == _numel(head) < total
    # float32 weights: 4 bytes a parameter (BatchNorm buffers and file headers on top)
    assert 4 * total / 1e6 < probe.data.metrics["model/size_mb"] < 4 * total / 1e6 * 1.1


def test_trainable_counts_the_stages_unfrozen_in_the_epochs_trained(make_config):
    cfg = make_config("backbone.arch=small_cnn")
    backbone = instantiate(cfg.backbone)
    head = torch.nn.Linear(backbone.feature_dim, 3)
    gradual = Gradual(milestones=[1, 2], warmup_epochs=0)
    last_stage = _numel(torch.nn.ParameterList(backbone.stage_parameters(2)))
    trained = [parameter_counts(backbone, head, gradual, epochs=e)[1] for e in (1, 2)]
    assert _numel(torch.nn.ParameterList(trained[0])) == _numel(head)
    assert _numel(torch.nn.ParameterList(trained[1])) == _numel(head) + last_stage
    partial = Partial(k=1)
    first_stage = _numel(torch.nn.ParameterList(backbone.stage_parameters(0)))
    total, trained = parameter_counts(backbone, head, partial, epochs=3)
    assert _numel(torch.nn.ParameterList(trained)) == total - first_stage


def test_measuring_leaves_the_model_as_it_found_it(make_config):
    pl.seed_everything(0, verbose=False)
    backbone = instantiate(make_config().backbone)
    head = torch.nn.Linear(backbone.feature_dim, 3)
    backbone.train()
    frozen_bn = backbone.network.features[0][1].eval()  # as a frozen stage's BatchNorm is
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    rng = torch.get_rng_state()
    setting = InferenceSetting((3, 8, 8), torch.device("cpu"), "32-true", epochs=1)
    cost = inference_cost(backbone, head, FullFineTune(), setting, batch_size=4)
    assert cost["inference/latency_ms_batch"] > 0
    assert backbone.training and head.training and not frozen_bn.training
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)  # a run's later stages see the same RNG
    model = Classifier(backbone.network, head)
    assert state_dict_megabytes(model) > state_dict_megabytes(head)


def test_an_architecture_is_timed_once_per_setting(make_config):
    """A sweep's trials share an architecture: the second trial's latency comes without a
    forward pass; another input size is timed anew."""
    backbone = instantiate(make_config().backbone)
    # 7 classes: an architecture no other test times (the cache lives as long as the process)
    head = torch.nn.Linear(backbone.feature_dim, 7)
    calls = []
    head.register_forward_hook(lambda *_: calls.append(1))
    setting = InferenceSetting((3, 8, 8), torch.device("cpu"), "32-true", epochs=1)
    first = inference_cost(backbone, head, FullFineTune(), setting, batch_size=5)
    timed = len(calls)
    assert timed >= 4  # a warm-up and at least one timed call per batch size
    again = inference_cost(backbone, head, FullFineTune(), setting, batch_size=5)
    assert len(calls) == timed
    assert again == first
    larger = InferenceSetting((3, 12, 12), torch.device("cpu"), "32-true", epochs=1)
    inference_cost(backbone, head, FullFineTune(), larger, batch_size=5)
    assert len(calls) > timed
