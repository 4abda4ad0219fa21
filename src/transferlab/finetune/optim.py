"""Optimizer and scheduler built from config, with one param group per backbone stage.

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
OWN_OPTIMIZER_KEYS = ("backbone_lr_mult",)
OWN_SCHEDULER_KEYS = ("monitor",)


def param_groups(backbone: Backbone, head: nn.Module, lr: float, backbone_lr_mult: float):
    groups = [
        {"params": backbone.stage_parameters(i), "lr": lr * backbone_lr_mult, "name": f"stage{i}"}
        for i in range(backbone.num_stages)
    ]
    return [*groups, {"params": list(head.parameters()), "lr": lr, "name": "head"}]


def build_optimizer(cfg: DictConfig, backbone: Backbone, head: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(backbone, head, cfg.lr, cfg.backbone_lr_mult)
    # partial first: Hydra would otherwise turn the param-group dicts into configs
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
