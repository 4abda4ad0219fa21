"""Any timm model as a Backbone: stages from its feature info, preprocessing from its
pretrained config.

timm is imported only when such a backbone is built: importing it takes seconds.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import defaultdict

from torch import nn

from transferlab.data.transforms import Preprocessing
from transferlab.errors import UserError
from transferlab.models.backbone import Backbone, StagePrefixes, in_stage
from transferlab.models.input_size import check_input_size, resized
from transferlab.models.weights_file import load_weights_file


def build_timm_backbone(
    name: str = "resnet18",
    pretrained: bool = False,
    weights_path: str | None = None,
    input_size: int | None = None,
) -> Backbone:
    """Builds a timm model with its source weights (Hydra `_target_` of backbone=timm).

    `weights_path` (a file or an MLflow URI) is used instead of timm's pretrained weights.
    """
    check_input_size(input_size)
    network = _create(name, pretrained and weights_path is None)
    classifier = _classifier_path(network, name)
    if weights_path is not None:
        load_weights_file(network, weights_path, classifier, name)
    preprocessing = _preprocessing(network)
    if input_size is not None:
        fixed = network.pretrained_cfg.get("fixed_input_size", False)
        preprocessing = resized(preprocessing, input_size, name, fixed)
    source = weights_path or ("timm pretrained" if pretrained else "random init")
    stages = feature_stages(network, classifier)
    return Backbone(network, classifier, stages, preprocessing, name, source)


build_timm_backbone.check_options = check_input_size  # the model name is checked by timm


def feature_stages(network: nn.Module, classifier: str) -> StagePrefixes:
    """One stage per level of timm's feature info, each closed by that level's module.

    The stem joins the first stage, layers after the last feature module (final norm,
    pre-logits) the last. The classifier's parameters are left out: the Backbone drops it.
    """
    modules = [n for n, _ in network.named_modules()]
    position = {n: i for i, n in enumerate(modules)}
    ends = [
        max(i for i, n in enumerate(modules) if in_stage(n, [info["module"]]))
        for info in getattr(network, "feature_info", [])
    ]
    last = max(len(ends), 1) - 1
    stage_of = {
        n: min(bisect_left(ends, position[n.rpartition(".")[0]]), last)
        for n, _ in network.named_parameters()
        if not in_stage(n, [classifier])
    }
    return _shortest_prefixes(stage_of, last + 1)


def _shortest_prefixes(stage_of: dict[str, int], count: int) -> StagePrefixes:
    """Each parameter under its outermost module whose parameters share its stage.

    Module paths rather than parameter names, so `Backbone.stage_modules` finds the layers
    (frozen BatchNorm layers are put in eval mode through it).
    """
    stages_under: dict[str, set[int]] = defaultdict(set)
    for name, stage in stage_of.items():
        for prefix in _ancestors(name):
            stages_under[prefix].add(stage)
    stages: StagePrefixes = [[] for _ in range(count)]
    for name, stage in stage_of.items():
        prefix = next(p for p in _ancestors(name) if len(stages_under[p]) == 1)
        if prefix not in stages[stage]:
            stages[stage].append(prefix)
    return [stage for stage in stages if stage]


def _ancestors(name: str) -> list[str]:
    """'a.b.c' -> ['a', 'a.b', 'a.b.c']"""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _create(name: str, pretrained: bool) -> nn.Module:
    """timm's own model and loader, with one clear line when the weights cannot be had."""
    import timm

    if not timm.is_model(name):
        raise UserError(
            f"backbone.name={name!r} is not a timm model; list them with timm.list_models()"
        )
    if not pretrained:
        return timm.create_model(name)
    try:
        return timm.create_model(name, pretrained=True)
    except (OSError, RuntimeError) as err:
        reason = str(err).partition(". ")[0].partition("\n")[0]
        raise UserError(
            f"could not load timm's pretrained weights for {name} ({type(err).__name__}: "
            f"{reason}); offline, pass backbone.weights_path=FILE (a state dict for {name})"
        ) from err


def _classifier_path(network: nn.Module, name: str) -> str:
    """The dotted path of the layer timm calls the classifier (the Backbone replaces it)."""
    head = network.get_classifier()
    path = next((n for n, m in network.named_modules() if m is head and n), None)
    if path is None:
        raise UserError(f"backbone.name={name}: the timm model has no single classifier layer")
    return path


def _preprocessing(network: nn.Module) -> Preprocessing:
    """What the model was pretrained with, as timm's eval transform does it."""
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(network)
    size = config["input_size"][-1]
    return Preprocessing(
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        input_size=size,
        resize_size=math.floor(size / config["crop_pct"]),
    )
