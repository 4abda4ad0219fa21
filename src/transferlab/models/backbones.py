"""The built-in architectures by name (torchvision's and the small CNN) and `build_backbone`,
the `_target_` that builds one with its source weights.

For each architecture the table knows where its final classifier layer sits and what its
stages are (see models/backbone.py). Add an architecture with `register_architecture`, or
point `backbone._target_` at your own function that returns a `Backbone`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.error import URLError

import torch
import torchvision
from torch import nn

from transferlab.components import OptionError
from transferlab.data.transforms import Preprocessing
from transferlab.errors import UserError, one_of
from transferlab.models.backbone import Backbone, StagePrefixes
from transferlab.models.input_size import check_input_size, resized
from transferlab.models.small_cnn import SmallCNN
from transferlab.models.weights_file import load_weights_file


@dataclass(frozen=True)
class Architecture:
    build: Callable[[], nn.Module]  # a randomly initialised network with its source classifier
    classifier: str  # dotted path of the final linear layer, replaced by the new head
    stages: Callable[[nn.Module], StagePrefixes]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)  # when weights carry none
    torchvision_name: str | None = None  # for torchvision's weights registry
    fixed_input_size: bool = False  # True: the network only accepts preprocessing.input_size


ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(name: str, architecture: Architecture) -> None:
    ARCHITECTURES[name] = architecture


def build_backbone(
    arch: str,
    weights: str | None = None,
    weights_path: str | None = None,
    input_size: int | None = None,
) -> Backbone:
    """Builds a registered architecture with its source weights (Hydra `_target_`)."""
    check_backbone_options(arch, weights, weights_path, input_size)
    spec = ARCHITECTURES[arch]
    network = spec.build()
    preprocessing = spec.preprocessing
    if weights_path is not None:
        load_weights_file(network, weights_path, spec.classifier, arch)
    elif weights is not None:
        weights_enum = _torchvision_weights(arch, spec, weights)
        network.load_state_dict(_download(arch, weights_enum))
        preprocessing = preprocessing_from_weights(weights_enum)
    if input_size is not None:
        preprocessing = resized(preprocessing, input_size, arch, spec.fixed_input_size)
    source = weights_path or weights or "random init"
    return Backbone(network, spec.classifier, spec.stages(network), preprocessing, arch, source)


def check_backbone_options(
    arch: str,
    weights: str | None = None,
    weights_path: str | None = None,
    input_size: int | None = None,
) -> None:
    """What build_backbone refuses before building anything (its `check_options`, which
    validation calls): a misspelt name fails before any run is recorded."""
    check_architecture(arch, weights if weights_path is None else None)  # a file wins
    check_input_size(input_size)


build_backbone.check_options = check_backbone_options


def check_architecture(arch: str, weights: str | None = None) -> None:
    if arch not in ARCHITECTURES:
        raise OptionError("arch", arch, f"is unknown; use {one_of(ARCHITECTURES)}")
    if weights is not None:
        _torchvision_weights(arch, ARCHITECTURES[arch], weights)


def _torchvision_weights(arch: str, spec: Architecture, weights: str):
    if spec.torchvision_name is None:
        raise UserError(
            f"backbone.weights={weights!r}: {arch} has no published weights; "
            "use backbone.weights=null or backbone.weights_path=FILE"
        )
    enum = torchvision.models.get_model_weights(spec.torchvision_name)
    names = [*enum.__members__]
    if weights not in names:
        raise UserError(
            f"backbone.weights={weights!r} does not exist for {arch}; use {one_of(names)}"
        )
    return enum[weights]


def _download(arch: str, weights_enum) -> dict:
    """Torchvision's own loader (which reads its cache first, unchecked), with an
    offline-friendly error; weights_only: a file planted in the cache is not unpickled."""
    try:
        return weights_enum.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except (URLError, OSError, RuntimeError) as err:
        expected = os.path.join(
            torch.hub.get_dir(), "checkpoints", os.path.basename(weights_enum.url)
        )
        raise UserError(
            f"could not download {arch} weights {weights_enum.name} ({err.__class__.__name__}: "
            f"offline?); put the file at {expected} "
            "or pass backbone.weights_path=/path/to/state_dict.pth"
        ) from err


def preprocessing_from_weights(weights_enum) -> Preprocessing:
    """The mean, std and sizes the weights were trained with (torchvision's preset)."""
    preset = weights_enum.transforms()
    return Preprocessing(
        mean=tuple(preset.mean),
        std=tuple(preset.std),
        input_size=preset.crop_size[0],
        resize_size=preset.resize_size[0],
    )


# --- stage layouts -------------------------------------------------------------------------


def _resnet_stages(net: nn.Module) -> StagePrefixes:
    return [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]


def _blocks_of_features(net: nn.Module, pre_logits: list[str]) -> StagePrefixes:
    """One stage per block of `net.features`; layers before the classifier join the last."""
    stages = [[f"features.{i}"] for i in range(len(net.features))]
    stages[-1] += pre_logits
    return stages


def _vgg_stages(net: nn.Module) -> StagePrefixes:
    """The five conv blocks (each ending in max-pooling), then fc6 + fc7."""
    stages, block = [], []
    for i, layer in enumerate(net.features):
        block.append(f"features.{i}")
        if isinstance(layer, nn.MaxPool2d):
            stages.append(block)
            block = []
    return [*stages, ["classifier.0", "classifier.3"]]


def _vit_stages(net: nn.Module) -> StagePrefixes:
    """Patch embedding, each encoder block, the final norm."""
    blocks = [[f"encoder.layers.{name}"] for name, _ in net.encoder.layers.named_children()]
    return [["conv_proj", "class_token", "encoder.pos_embedding"], *blocks, ["encoder.ln"]]


def _torchvision(name: str, classifier: str, stages, **kwargs) -> Architecture:
    return Architecture(
        build=lambda: torchvision.models.get_model(name, weights=None),
        classifier=classifier,
        stages=stages,
        torchvision_name=name,
        **kwargs,
    )


for _name in ("resnet18", "resnet50"):
    register_architecture(_name, _torchvision(_name, "fc", _resnet_stages))
for _name in ("vgg16", "vgg19"):
    register_architecture(_name, _torchvision(_name, "classifier.6", _vgg_stages))
register_architecture(
    "mobilenet_v3_small",
    _torchvision(
        "mobilenet_v3_small", "classifier.3", lambda n: _blocks_of_features(n, ["classifier.0"])
    ),
)
register_architecture(
    "efficientnet_b0",
    _torchvision("efficientnet_b0", "classifier.1", lambda n: _blocks_of_features(n, [])),
)
register_architecture(
    "convnext_tiny",
    _torchvision(
        "convnext_tiny", "classifier.2", lambda n: _blocks_of_features(n, ["classifier.0"])
    ),
)
register_architecture(
    "vit_b_16", _torchvision("vit_b_16", "heads.head", _vit_stages, fixed_input_size=True)
)


def _small_cnn(widths: tuple[int, int, int]) -> Architecture:
    return Architecture(
        build=functools.partial(SmallCNN, widths=widths),
        classifier="classifier",
        stages=lambda n: _blocks_of_features(n, []),
        preprocessing=Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=None),
    )


register_architecture("small_cnn", _small_cnn((32, 64, 128)))
# twice as wide (256-d features): backbone=small_cnn backbone.arch=small_cnn_wide
register_architecture("small_cnn_wide", _small_cnn((64, 128, 256)))


def _small_vit() -> Architecture:
    """A ViT-Tiny-like transformer for 16 px inputs (16 patches of 4 px; 6 blocks of width
    96, 3 heads): what parameter-efficient methods are studied on offline (experiments/peft)."""
    build = functools.partial(
        torchvision.models.VisionTransformer,
        image_size=16,
        patch_size=4,
        num_layers=6,
        num_heads=3,
        hidden_dim=96,
        mlp_dim=384,
    )
    return Architecture(
        build=build,
        classifier="heads.head",
        stages=_vit_stages,
        preprocessing=Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=16),
        fixed_input_size=True,
    )


register_architecture("vit_tiny_p4", _small_vit())
