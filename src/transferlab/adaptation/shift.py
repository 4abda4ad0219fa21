"""How far apart the two domains' features are, before training and after (the checkpoint
the run tested): the A-distance proxy of each, and a 2-D picture of both domains, recorded
on the run. Computed on the test splits of both domains, whose images the run never
trained on; their labels only colour the picture."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from transferlab.adaptation.diagnostics import plot_domain_features, proxy_a_distance
from transferlab.data.module import TransferDataModule
from transferlab.tracking.mlflow_run import TrackedRun

MAX_IMAGES = 1000  # per domain: enough for a stable estimate and a readable picture

DomainFeatures = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@torch.inference_mode()
def test_features(backbone: nn.Module, data: TransferDataModule) -> DomainFeatures:
    """(source features, target features, source labels, target labels) of the first
    MAX_IMAGES test images of each domain, from the backbone as it is now."""
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    found = []
    for loader in data.test_dataloader():
        features, labels, seen = [], [], 0
        for images, targets in loader:
            features.append(backbone(images.to(device)).float().cpu())
            labels.append(targets)
            seen += len(targets)
            if seen >= MAX_IMAGES:
                break
        found.append((torch.cat(features)[:MAX_IMAGES], torch.cat(labels)[:MAX_IMAGES]))
    backbone.train(was_training)
    (source, source_labels), (target, target_labels) = found
    return source, target, source_labels, target_labels


def record_domain_shift(
    run: TrackedRun, before: DomainFeatures, after: DomainFeatures, folder: Path, seed: int
) -> dict[str, float]:
    """Logs adapt/a_distance_before and _after and the picture (adapt/domain_features.png)."""
    metrics = {
        "adapt/a_distance_before": proxy_a_distance(*before[:2], seed=seed),
        "adapt/a_distance_after": proxy_a_distance(*after[:2], seed=seed),
    }
    run.log_metrics(metrics)
    folder.mkdir(parents=True, exist_ok=True)
    picture = plot_domain_features(
        before[:2], after[:2], folder / "domain_features.png", seed=seed, labels=after[2:]
    )
    run.log_artifact(picture, "adapt")
    return metrics
