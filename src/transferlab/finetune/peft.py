"""Parameter-efficient fine-tuning: the backbone's own weights stay frozen and a few
parameters train (`freeze=lora|bitfit|vpt|adapter`), with the head.

Each method is a freeze strategy that freezes every stage and names what trains anyway. LoRA,
VPT and adapters first add their parameters to the built network (`adapt`); BitFit trains
parameters that are there already. A run's checkpoints then hold only what trained and the
sha256 of the base weights it sat on (see TransferModule.on_save_checkpoint): 100 tasks on
one backbone cost 100 small files. The layers themselves live in finetune/peft_layers.py,
imported when a network is adapted: validation builds these strategies without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from transferlab.components import OptionError, fraction, number, whole_number
from transferlab.finetune.freezing import FreezeStrategy

if TYPE_CHECKING:
    from torch import nn

    from transferlab.models.backbone import Backbone

LORA_PRESETS = ("auto", "attention")


class ParameterEfficient(FreezeStrategy):
    """Every stage frozen (BatchNorm statistics too, so nothing but `trains` changes);
    the parameters `trains` names train in every epoch."""

    def frozen_stages(self, num_stages: int, epoch: int) -> set[int]:
        return set(range(num_stages))

    def is_always_frozen(self, num_stages: int, max_epochs: int) -> bool:
        return False  # its parameters sit inside the backbone: no cached features

    def adapt(self, backbone: Backbone) -> None:
        """Adds the method's parameters to the built network and records the digest of the
        weights they sit on (`backbone.base_sha256`), which checkpoints are checked against."""
        from transferlab.data.feature_cache import weights_identity

        backbone.base_sha256 = weights_identity(backbone.network)
        self.add_parameters(backbone)

    def add_parameters(self, backbone: Backbone) -> None:
        """Where a method inserts its layers; raises OptionError where it cannot."""

    def trains(self, name: str) -> bool:
        """Whether the network's parameter `name` trains (a method whose choice depends on
        the layers, such as BitFit's norms, overrides `always_trained` instead)."""
        raise NotImplementedError

    def always_trained(self, network: nn.Module) -> list[nn.Parameter]:
        return [p for name, p in network.named_parameters() if self.trains(name)]


class LoRA(ParameterEfficient):
    """LoRA (Hu et al. 2022) through peft: each targeted layer's weight W gets a trained
    low-rank update (alpha / r) B A, B zero-initialised, so training starts at the base
    model's outputs. `target`: `auto` (every linear layer, every non-grouped convolution but
    the stem, every nn.MultiheadAttention as a whole), `attention` (attention projections
    only), or a list of regular expressions matched against whole module names."""

    def __init__(
        self,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.0,
        target: str | Sequence[str] = "auto",
    ):
        target = _listed_or_str(target)
        self.check_options(r=r, alpha=alpha, dropout=dropout, target=target)
        self.r, self.alpha, self.dropout, self.target = r, alpha, dropout, target

    @staticmethod
    def check_options(r: int, alpha: float, dropout: float, target: str | Sequence[str]) -> None:
        whole_number("r", r, 1)
        number("alpha", alpha, 0, strict=True)
        fraction("dropout", dropout)
        target = _listed_or_str(target)
        presets = isinstance(target, str) and target in LORA_PRESETS
        patterns = isinstance(target, list) and target and all(isinstance(t, str) for t in target)
        if not (presets or patterns):
            raise OptionError(
                "target",
                target,
                f"must be {' or '.join(LORA_PRESETS)}, or a non-empty list of module-name "
                "patterns (regular expressions matching whole names, e.g. ['.*self_attention'])",
            )

    def add_parameters(self, backbone: Backbone) -> None:
        from transferlab.finetune.peft_layers import inject_lora

        inject_lora(backbone.network, self.target, self.r, self.alpha, self.dropout)

    def trains(self, name: str) -> bool:
        return ".lora_A." in name or ".lora_B." in name


class BitFit(ParameterEfficient):
    """BitFit (Ben Zaken et al. 2022): only the biases train (and, with `norms`, the
    normalisation layers' scales and shifts). Nothing is added to the network."""

    def __init__(self, norms: bool = False):
        self.check_options(norms=norms)
        self.norms = norms

    @staticmethod
    def check_options(norms: bool) -> None:
        if not isinstance(norms, bool):
            raise OptionError("norms", norms, "must be true or false")

    def always_trained(self, network: nn.Module) -> list[nn.Parameter]:
        from transferlab.finetune.peft_layers import norm_parameter_names

        norms = norm_parameter_names(network) if self.norms else set()
        return [
            p for name, p in network.named_parameters() if name.endswith("bias") or name in norms
        ]


class VisualPromptTuning(ParameterEfficient):
    """VPT (Jia et al. 2022) for ViTs: `prompts` trained tokens inserted after the class
    token, into the first block only (`deep: false`, VPT-shallow) or fresh ones into every
    block (VPT-deep); removed again after the last block, so pooling is unchanged."""

    def __init__(self, prompts: int = 8, deep: bool = True, dropout: float = 0.0):
        self.check_options(prompts=prompts, deep=deep, dropout=dropout)
        self.prompts, self.deep, self.dropout = prompts, deep, dropout

    @staticmethod
    def check_options(prompts: int, deep: bool, dropout: float) -> None:
        whole_number("prompts", prompts, 1)
        if not isinstance(deep, bool):
            raise OptionError("deep", deep, "must be true (VPT-deep) or false (VPT-shallow)")
        fraction("dropout", dropout)

    def add_parameters(self, backbone: Backbone) -> None:
        from transferlab.finetune.peft_layers import insert_prompts

        insert_prompts(backbone.network, backbone.name, self.prompts, self.deep, self.dropout)

    def trains(self, name: str) -> bool:
        return ".vpt." in name


class Adapter(ParameterEfficient):
    """Bottleneck adapters (Houlsby et al. 2019) after each block's MLP, for ViTs and
    ConvNeXts: h + up(gelu(down(h))) with `bottleneck` hidden units, `up` zero-initialised
    so training starts at the base model's outputs."""

    def __init__(self, bottleneck: int = 16):
        self.check_options(bottleneck=bottleneck)
        self.bottleneck = bottleneck

    @staticmethod
    def check_options(bottleneck: int) -> None:
        whole_number("bottleneck", bottleneck, 1)

    def add_parameters(self, backbone: Backbone) -> None:
        from transferlab.finetune.peft_layers import insert_adapters

        insert_adapters(backbone.network, backbone.name, self.bottleneck)

    def trains(self, name: str) -> bool:
        return ".adapter." in name


def _listed_or_str(target):
    """A list of the patterns (Hydra passes a ListConfig), or the preset's name."""
    is_list = isinstance(target, Sequence) and not isinstance(target, str)
    return list(target) if is_list else target
