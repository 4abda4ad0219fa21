"""Backbones: pretrained networks with their classifier removed, split into ordered stages.

The registry knows, for each architecture, where its final classifier layer sits and what
its stages are (lists of parameter-name prefixes, from the input towards the head). Freeze
strategies and per-stage learning rates work on those stages. Add an architecture with
`register_architecture`, or point `backbone._target_` at your own function that returns
a `Backbone`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.error import URLError

import torch
import torchvision
from torch import nn

from transferlab.data.transforms import Preprocessing
from transferlab.errors import UserError, one_of
from transferlab.models.small_cnn import SmallCNN
from transferlab.safe_load import load_tensors

StagePrefixes = list[list[str]]
MLFLOW_URI_SCHEMES = ("runs:/", "models:/")  # weights_path values resolved through MLflow
WEIGHTS_SUFFIXES = (".pt", ".pth")


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


class Backbone(nn.Module):
    """A feature extractor: the source network with its final classifier swapped out.

    The removed layer is kept, frozen, as `source_head` (the source task's own classifier).
    """

    def __init__(
        self,
        network: nn.Module,
        classifier: str,
        stages: StagePrefixes,
        preprocessing: Preprocessing,
        name: str = "custom",
    ):
        super().__init__()
        source_head = network.get_submodule(classifier)
        if not isinstance(source_head, nn.Linear):
            raise UserError(f"{name}: {classifier} must be a Linear layer, got {source_head}")
        _replace_submodule(network, classifier, nn.Identity())
        self.network = network
        self.source_head = source_head.requires_grad_(False)
        self.classifier = classifier
        self.stages = stages
        self.preprocessing = preprocessing
        self.name = name
        self.feature_dim = source_head.in_features
        self._check_stages_cover_all_parameters()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def stage_parameters(self, index: int) -> list[nn.Parameter]:
        return [p for n, p in self.network.named_parameters() if _in_stage(n, self.stages[index])]

    def stage_modules(self, index: int) -> list[nn.Module]:
        return [m for n, m in self.network.named_modules() if _in_stage(n, self.stages[index])]

    def source_state_dict(self, head: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """The network's weights in its original layout (loadable as `weights_path`).

        With a linear `head`, that head becomes the classifier (the task just trained).
        """
        state = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
        final = head if isinstance(head, nn.Linear) else self.source_head
        for key, value in final.state_dict().items():
            state[f"{self.classifier}.{key}"] = value.detach().clone()
        return state

    def _check_stages_cover_all_parameters(self) -> None:
        names = [n for n, _ in self.network.named_parameters()]
        outside = [n for n in names if not any(_in_stage(n, s) for s in self.stages)]
        twice = [n for n in names if sum(_in_stage(n, s) for s in self.stages) > 1]
        if outside or twice:
            raise UserError(
                f"{self.name}: every parameter must be in exactly one stage; "
                f"outside any: {outside[:3]}, in several: {twice[:3]}"
            )


def build_backbone(
    arch: str,
    weights: str | None = None,
    weights_path: str | None = None,
    input_size: int | None = None,
) -> Backbone:
    """Builds a registered architecture with its source weights (Hydra `_target_`)."""
    check_architecture(arch)
    spec = ARCHITECTURES[arch]
    network = spec.build()
    preprocessing = spec.preprocessing
    if weights_path is not None:
        load_weights_file(network, weights_path, spec.classifier, arch)
    elif weights is not None:
        weights_enum = _torchvision_weights(arch, spec, weights)
        network.load_state_dict(_download(arch, weights_enum))
        preprocessing = _preprocessing_from_weights(weights_enum)
    if input_size is not None:
        preprocessing = _resized(preprocessing, input_size, arch, spec.fixed_input_size)
    return Backbone(network, spec.classifier, spec.stages(network), preprocessing, arch)


def check_architecture(arch: str, weights: str | None = None) -> None:
    """What build_backbone refuses before building anything: config.validate asks too, so
    a misspelt name fails before any run is recorded."""
    if arch not in ARCHITECTURES:
        raise UserError(f"backbone.arch={arch!r} is unknown; use {one_of(ARCHITECTURES)}")
    if weights is not None:
        _torchvision_weights(arch, ARCHITECTURES[arch], weights)


def load_weights_file(network: nn.Module, path: str, classifier: str, arch: str) -> None:
    """Loads a local state dict into `network`, fitting the classifier to the file's classes.

    `path` may be an MLflow URI (see `local_weights_file`). Loaded with weights_only=True:
    a file that needs pickle to load is refused unread.
    """
    with local_weights_file(path) as local:
        if not os.path.isfile(local):
            raise UserError(f"backbone.weights_path={path} does not exist; pass a state dict file")
        state = load_tensors(
            local,
            f"backbone.weights_path={path}",
            "save a plain state dict: torch.save(model.state_dict(), path)",
        )
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(
            f"backbone.weights_path={path} holds a {type(state).__name__}, not a state dict"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    _fit_classifier_to(network, classifier, state)
    try:
        missing, unexpected = network.load_state_dict(state, strict=False)
    except RuntimeError as err:
        mismatch = str(err).split("\n\t", 1)[-1].split("\n")[0]
        raise UserError(f"backbone.weights_path={path} does not fit {arch}: {mismatch}") from err
    if missing or unexpected:
        raise UserError(
            f"backbone.weights_path={path} does not fit {arch}: missing keys {missing[:3]}, "
            f"unexpected keys {unexpected[:3]} (is it a state dict for {arch}?)"
        )


@contextmanager
def local_weights_file(path: str) -> Iterator[str]:
    """A local path as given; an MLflow `runs:/` or `models:/` URI downloaded to a temporary
    file, removed after use (a sweep of transfer runs would otherwise fill /tmp).

    Every transferlab run logs `backbone.pt`, so `runs:/<run_id>/backbone.pt` starts from the
    weights another run trained. The store is MLflow's current one ($MLFLOW_TRACKING_URI).
    """
    if not path.startswith(MLFLOW_URI_SCHEMES):
        yield path
        return
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    uri = path
    with tempfile.TemporaryDirectory(prefix="transferlab-weights-") as folder:
        try:
            if path.startswith("models:/"):
                # The version's own source: one registered from a single file
                # (runs:/<id>/backbone.pt) downloads as an empty folder through its models:/ URI.
                uri = ModelsArtifactRepository.get_underlying_uri(path)
            local = download_artifacts(artifact_uri=uri, dst_path=folder)
        except (MlflowException, OSError) as err:
            reason = str(err).partition("\n")[0]
            raise UserError(
                f"backbone.weights_path={path} could not be resolved: {reason}"
            ) from err
        yield local if os.path.isfile(local) else _single_weights_file(path, Path(local))


def _single_weights_file(uri: str, folder: Path) -> str:
    """A URI naming a folder (a run's artifacts, a registered model): its one weights file."""
    found = sorted(p for p in folder.rglob("*") if p.suffix in WEIGHTS_SUFFIXES and p.is_file())
    if len(found) != 1:
        names = [str(p.relative_to(folder)) for p in found[:3]]
        raise UserError(
            f"backbone.weights_path={uri} is a folder with {len(found)} .pt/.pth files "
            f"{names}, not one; name the file in the URI"
        )
    return str(found[0])


def _fit_classifier_to(network: nn.Module, classifier: str, state: dict) -> None:
    """A source trained on other classes: give the network a classifier of the file's shape."""
    weight = state.get(f"{classifier}.weight")
    current = network.get_submodule(classifier)
    if weight is not None and weight.ndim == 2 and weight.shape != current.weight.shape:
        out_features, in_features = weight.shape
        bias = f"{classifier}.bias" in state
        _replace_submodule(network, classifier, nn.Linear(in_features, out_features, bias=bias))


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
    """Torchvision's own loader (which reads its cache first), with an offline-friendly error."""
    try:
        return weights_enum.get_state_dict(progress=False, check_hash=True)
    except (URLError, OSError, RuntimeError) as err:
        expected = os.path.join(
            torch.hub.get_dir(), "checkpoints", os.path.basename(weights_enum.url)
        )
        raise UserError(
            f"could not download {arch} weights {weights_enum.name} ({err.__class__.__name__}: "
            f"offline?); put the file at {expected} "
            "or pass backbone.weights_path=/path/to/state_dict.pth"
        ) from err


def _preprocessing_from_weights(weights_enum) -> Preprocessing:
    preset = weights_enum.transforms()
    return Preprocessing(
        mean=tuple(preset.mean),
        std=tuple(preset.std),
        input_size=preset.crop_size[0],
        resize_size=preset.resize_size[0],
    )


def _resized(preprocessing: Preprocessing, size: int, arch: str, fixed: bool) -> Preprocessing:
    if size < 8:
        raise UserError(f"backbone.input_size={size} is too small; use 8 or more")
    if fixed and size != preprocessing.input_size:
        raise UserError(
            f"backbone.input_size={size}: {arch} only takes {preprocessing.input_size} px inputs"
        )
    crop, resize = preprocessing.input_size, preprocessing.resize_size
    resize = round(size * resize / crop) if crop and resize else None
    return replace(preprocessing, input_size=size, resize_size=resize)


def _replace_submodule(network: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    setattr(network.get_submodule(parent_path), leaf, module)


def _in_stage(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


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
register_architecture(
    "small_cnn",
    Architecture(
        build=SmallCNN,
        classifier="classifier",
        stages=lambda n: _blocks_of_features(n, []),
        preprocessing=Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=None),
    ),
)
