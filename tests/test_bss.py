"""Batch spectral shrinkage (`regularizer=bss`): its penalty checked against an SVD of a
hand-made matrix, its effect on the features a real fit learns, and the option through the
real app."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.test_effects import THREE_CLASSES, fit
from transferlab.errors import UserError
from transferlab.finetune.bss import BatchSpectralShrinkage


def known_features() -> torch.Tensor:
    """Four features of three dimensions, singular values spread well apart."""
    return torch.tensor(
        [[3.0, 0.0, 1.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.5], [0.0, 0.0, 0.25]],
    )


@pytest.mark.parametrize("k", [1, 2, 3, 7])  # 7: more than the matrix has, so all of them
def test_the_penalty_is_the_sum_of_the_k_smallest_squared_singular_values(k):
    features = known_features()
    values = sorted(torch.linalg.svdvals(features.double()).tolist())
    assert len(set(values)) == 3
    reg = BatchSpectralShrinkage(None, None, weight=0.5, k=k)
    assert reg(None, features).item() == pytest.approx(0.5 * sum(v * v for v in values[:k]))


def test_the_penalty_is_float32_under_bf16_autocast_and_has_a_gradient():
    features = known_features().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        penalty = BatchSpectralShrinkage(None, None, weight=1.0, k=1)(None, features)
    assert penalty.dtype == torch.float32
    penalty.backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def spectrum(cfg, tmp_path: Path) -> torch.Tensor:
    """The singular values of the trained backbone's features on the first training batch
    (seeded loader: the same images for every weight), in training mode as the penalty saw
    them: BatchNorm's running statistics have barely moved in a few steps."""
    trainer = fit(cfg, tmp_path)
    module = trainer.lightning_module.train()
    images, _ = next(iter(trainer.datamodule.train_dataloader()))
    with torch.no_grad():
        return torch.linalg.svdvals(module.backbone(images))


def test_a_large_weight_shrinks_the_smallest_singular_values_of_the_features(make_config, tmp_path):
    k = 4
    overrides = [THREE_CLASSES, "callbacks=none", "trainer.max_epochs=2", "regularizer=bss"]

    def trained_with(weight: float) -> torch.Tensor:
        cfg = make_config(*overrides, f"regularizer.weight={weight}", f"regularizer.k={k}")
        return spectrum(cfg, tmp_path / str(weight))

    plain, shrunk = trained_with(0.0), trained_with(100.0)
    assert shrunk[-k:].sum() < 0.75 * plain[-k:].sum(), (plain[-k:], shrunk[-k:])
    largest = pytest.approx(plain[0].item(), rel=0.1)
    assert shrunk[0].item() == largest  # the tail shrank, not the scale of every feature


def test_bss_runs_through_the_app_and_logs_its_penalty(train, runs):
    train("regularizer=bss")
    (run,) = runs()
    assert run.info.status == "FINISHED"
    assert run.data.params["regularizer._target_"].endswith("bss.BatchSpectralShrinkage")
    assert (run.data.params["regularizer.weight"], run.data.params["regularizer.k"]) == (
        "0.001",
        "1",
    )
    assert run.data.metrics["train/reg"] > 0


def test_a_bad_k_is_refused_in_one_line_before_any_run(train, runs):
    with pytest.raises(UserError) as error:
        train("regularizer=bss", "regularizer.k=0")
    assert str(error.value).startswith("regularizer.k=0 must be a whole number >= 1")
    assert "\n" not in str(error.value)
    assert runs() == []
