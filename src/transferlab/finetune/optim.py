"""Optimizer and scheduler built from config, with param groups per backbone stage.

Every group exists from the first step (frozen stages just get no gradient), so schedulers
see a fixed set of groups for the whole run and a resumed run restores them as they were.
"""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from transferlab.models.backbones import Backbone

# Keys of the optimizer config that transferlab reads itself; the rest go to torch.optim.
OWN_OPTIMIZER_KEYS = ("backbone_lr_mult", "layer_decay", "decay_bias_and_norm")
OWN_SCHEDULER_KEYS = ("monitor",)


def stage_lr(cfg: DictConfig, num_stages: int, stage: int) -> float:
    """Discriminative learning rates: the backbone at lr x backbone_lr_mult and, with
    `layer_decay`, each stage a further decay^i, i its distance from the head (the stage
    next to the head: i=1). The head always gets lr."""
    distance_from_head = num_stages - stage
    return cfg.lr * cfg.backbone_lr_mult * (cfg.get("layer_decay") or 1.0) ** distance_from_head


def param_groups(cfg: DictConfig, backbone: Backbone, head: nn.Module) -> list[dict]:
    """One group per backbone stage and one for the head, each split into the parameters
    that get weight decay and those that do not (biases and norm weights, unless
    `decay_bias_and_norm`): pulling a norm's scale or a bias toward 0 only hurts."""
    stages = [
        (f"stage{i}", i, backbone.stage_parameters(i), stage_lr(cfg, backbone.num_stages, i))
        for i in range(backbone.num_stages)
    ]
    groups = []
    for name, stage, params, lr in [*stages, ("head", None, list(head.parameters()), cfg.lr)]:
        decayed, undecayed = _split_by_decay(params, cfg.get("decay_bias_and_norm", False))
        groups.append({"params": decayed, "lr": lr, "name": name, "stage": stage})
        groups.append(
            {"params": undecayed, "lr": lr, "name": f"{name}-no_decay", "stage": stage}
            | {"weight_decay": 0.0}
        )
    return [g for g in groups if g["params"]]


def _split_by_decay(params: list[nn.Parameter], decay_all: bool):
    if decay_all:
        return params, []
    return [p for p in params if p.ndim > 1], [p for p in params if p.ndim <= 1]


def build_optimizer(cfg: DictConfig, backbone: Backbone, head: nn.Module) -> torch.optim.Optimizer:
    # partial first: Hydra would otherwise turn the param-group dicts into configs
    groups = param_groups(cfg, backbone, head)
    return instantiate(_without(cfg, OWN_OPTIMIZER_KEYS), _partial_=True)(groups)


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """A Lightning lr_scheduler dict, stepped once per epoch; None for a constant rate."""
    if cfg.get("_target_") is None:
        return None
    scheduler = instantiate(_without(cfg, OWN_SCHEDULER_KEYS), _partial_=True)(optimizer)
    config = {"scheduler": scheduler, "interval": "epoch"}
    if cfg.get("monitor"):
        config["monitor"] = cfg.monitor
    return config


def _without(cfg: DictConfig, keys: tuple[str, ...]) -> DictConfig:
    container = OmegaConf.to_container(cfg, resolve=True)
    return OmegaConf.create({k: v for k, v in container.items() if k not in keys})
