"""The Backbone: a pretrained network with its classifier removed, split into ordered stages.

Stages are lists of parameter-name prefixes, from the input towards the head; freeze
strategies and per-stage learning rates work on them. Any network with a final `nn.Linear`
classifier becomes one: point `backbone._target_` at your own function that returns a
`Backbone` (built-in architectures: models/backbones.py, timm: models/timm_backbone.py).
"""

from __future__ import annotations

import torch
from torch import nn

from transferlab.data.transforms import Preprocessing
from transferlab.errors import UserError

StagePrefixes = list[list[str]]


class Backbone(nn.Module):
    """A feature extractor: the source network with its final classifier swapped out.

    The removed layer is kept, frozen, as `source_head` (the source task's own classifier).
    `weights_source` says where the weights came from; `base_sha256` is set when a
    parameter-efficient method adapts the network: the digest of the weights it sits on.
    """

    def __init__(
        self,
        network: nn.Module,
        classifier: str,
        stages: StagePrefixes,
        preprocessing: Preprocessing,
        name: str = "custom",
        weights_source: str = "random init",
    ):
        super().__init__()
        source_head = network.get_submodule(classifier)
        if not isinstance(source_head, nn.Linear):
            raise UserError(f"{name}: {classifier} must be a Linear layer, got {source_head}")
        replace_submodule(network, classifier, nn.Identity())
        self.network = network
        self.source_head = source_head.requires_grad_(False)
        self.classifier = classifier
        self.stages = stages
        self.preprocessing = preprocessing
        self.name = name
        self.weights_source = weights_source
        self.base_sha256: str | None = None
        self.feature_dim = source_head.in_features
        self._check_stages_cover_all_parameters()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def stage_parameters(self, index: int) -> list[nn.Parameter]:
        return [p for n, p in self.network.named_parameters() if in_stage(n, self.stages[index])]

    def stage_modules(self, index: int) -> list[nn.Module]:
        return [m for n, m in self.network.named_modules() if in_stage(n, self.stages[index])]

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
        outside = [n for n in names if not any(in_stage(n, s) for s in self.stages)]
        twice = [n for n in names if sum(in_stage(n, s) for s in self.stages) > 1]
        if outside or twice:
            raise UserError(
                f"{self.name}: every parameter must be in exactly one stage; "
                f"outside any: {outside[:3]}, in several: {twice[:3]}"
            )


def in_stage(name: str, prefixes: list[str]) -> bool:
    """Whether a parameter or module `name` lies under one of a stage's prefixes."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def replace_submodule(network: nn.Module, path: str, module: nn.Module) -> None:
    """Puts `module` at the dotted `path` (a classifier swapped out, or resized to a file's)."""
    parent_path, _, leaf = path.rpartition(".")
    setattr(network.get_submodule(parent_path), leaf, module)
