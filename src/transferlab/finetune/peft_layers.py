"""The layers parameter-efficient methods add to a built network (see finetune/peft.py):
LoRA through peft, VPT's prompt tokens and Houlsby adapters, our own.

Prompts and adapters are attached as child modules of the blocks they act in, and act
through forward hooks: the base network's parameter names and code stay as they were, so its
weights load, and its digest is checked, unchanged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from transferlab.components import OptionError
from transferlab.errors import UserError
from transferlab.models.backbone import replace_submodule

LORA_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.MultiheadAttention)


# --- LoRA ----------------------------------------------------------------------------------


def inject_lora(
    network: nn.Module, target: str | Sequence[str], r: int, alpha: float, dropout: float
) -> list[str]:
    """Wraps the targeted layers of `network` in peft's LoRA layers, in place; returns
    their names."""
    from peft import LoraConfig, inject_adapter_in_model

    names = lora_targets(network, target)
    pattern = "^(?:" + "|".join(re.escape(name) for name in names) + ")$"
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern)
    inject_adapter_in_model(config, network)
    for name in names:
        layer = network.get_submodule(name)
        if isinstance(layer.get_base_layer(), nn.MultiheadAttention):
            layer.register_forward_pre_hook(_keep_base_weights)
            layer.register_forward_hook(_put_base_weights_back)
    return names


def _attention_weights(layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The modules holding peft's LoRA attention's base weights (in_proj, out_proj)."""
    attention = layer.get_base_layer()
    return attention, attention.out_proj.get_base_layer()


def _keep_base_weights(layer: nn.Module, args: tuple[Any, ...]) -> None:
    """peft's LoRA nn.MultiheadAttention adds its update to the base weights for each
    forward pass and subtracts it after: (W + dW) - dW drifts from W by a rounding error a
    pass, so the frozen base would change and no longer match its sha256. The base
    parameters themselves are kept here and put back after the pass."""
    attention, out_proj = _attention_weights(layer)
    layer.__dict__["_base_weights"] = (attention.in_proj_weight, out_proj.weight)


def _put_base_weights_back(layer: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    attention, out_proj = _attention_weights(layer)
    in_proj_weight, out_proj_weight = layer.__dict__.pop("_base_weights")
    del attention.in_proj_weight, out_proj.weight
    attention.register_parameter("in_proj_weight", in_proj_weight)
    out_proj.register_parameter("weight", out_proj_weight)


def lora_targets(network: nn.Module, target: str | Sequence[str]) -> list[str]:
    """The names of the layers `target` (a preset or full-match patterns) picks; an
    OptionError naming a few it could pick when it picks none."""
    layers = _lora_capable(network)
    if target == "auto":
        stem = next((n for n, m in layers.items() if isinstance(m, nn.Conv2d)), None)
        names = [n for n, m in layers.items() if _plain_layer(m) and n != stem]
    elif target == "attention":
        names = [n for n, m in layers.items() if _is_attention(network, n, m)]
    else:
        names = [n for n in layers if any(re.fullmatch(p, n) for p in target)]
    if not names:
        examples = ", ".join(list(layers)[:4]) or "none: it has no linear or conv layer"
        raise OptionError(
            "target", target, f"matches no layer LoRA can adapt; its layers are e.g. {examples}"
        )
    return names


def _lora_capable(network: nn.Module) -> dict[str, nn.Module]:
    """Layers peft can wrap, in order; those inside an nn.MultiheadAttention are left out:
    peft adapts the attention as a whole (its out_proj alone would get no gradient)."""
    attention = [n for n, m in network.named_modules() if isinstance(m, nn.MultiheadAttention)]
    return {
        name: module
        for name, module in network.named_modules()
        if isinstance(module, LORA_LAYERS) and not any(name.startswith(a + ".") for a in attention)
    }


def _plain_layer(module: nn.Module) -> bool:
    """Linear layers, attention, and convolutions that mix channels (not depthwise)."""
    if isinstance(module, nn.Conv2d):
        return module.groups == 1
    return isinstance(module, nn.Linear | nn.MultiheadAttention)


def _is_attention(network: nn.Module, name: str, module: nn.Module) -> bool:
    """torchvision's nn.MultiheadAttention, or a linear layer of an attention module
    (timm's fused `qkv` and its `proj`)."""
    if isinstance(module, nn.MultiheadAttention):
        return True
    parent = network.get_submodule(name.rpartition(".")[0])
    return isinstance(module, nn.Linear) and "Attention" in type(parent).__name__


def merge_lora(network: nn.Module) -> None:
    """Folds every LoRA update into its base layer's weight and puts the base layer back
    in place: the plain network again, exportable, with the adapted outputs."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    tuned = [n for n, m in network.named_modules() if isinstance(m, BaseTunerLayer)]
    for name in tuned:
        if any(name.startswith(outer + ".") for outer in tuned):
            continue  # an attention's out_proj: merged and put back with it
        layer = network.get_submodule(name)
        if hasattr(layer, "unload_and_optionally_merge_module"):  # an attention: as peft does,
            # so its merged weights are registered as parameters again (state dict, export)
            base = layer.unload_and_optionally_merge_module(
                merge=True, safe_merge=True, adapter_names=None
            )
        else:
            layer.merge(safe_merge=True)
            base = layer.get_base_layer()
        replace_submodule(network, name, base)


# --- BitFit --------------------------------------------------------------------------------

NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def norm_parameter_names(network: nn.Module) -> set[str]:
    """The scales and shifts of every normalisation layer."""
    return {
        f"{name}.{param}"
        for name, module in network.named_modules()
        if isinstance(module, NORMS)
        for param, _ in module.named_parameters(recurse=False)
    }


# --- the transformer blocks prompts and adapters act in ---------------------------------------


@dataclass(frozen=True)
class TransformerLayout:
    blocks: list[nn.Module]
    prefix_tokens: int  # the class token (and any register tokens) before the patches
    dim: int
    patch_pixels: int  # pixels in a patch (times 3 channels: VPT's initialisation)


def transformer_layout(network: nn.Module) -> TransformerLayout | None:
    """torchvision's VisionTransformer or timm's; None for any other network."""
    from torchvision.models import VisionTransformer

    if isinstance(network, VisionTransformer):
        blocks = list(network.encoder.layers)
        return TransformerLayout(blocks, 1, network.hidden_dim, network.patch_size**2)
    if _from_timm(network) and hasattr(network, "blocks") and hasattr(network, "patch_embed"):
        height, width = network.patch_embed.patch_size
        return TransformerLayout(
            list(network.blocks), network.num_prefix_tokens, network.embed_dim, height * width
        )
    return None


def _from_timm(module: nn.Module) -> bool:
    return type(module).__module__.startswith("timm.")


# --- VPT -----------------------------------------------------------------------------------


class Prompts(nn.Module):
    """One block's prompt tokens: inserted after the prefix tokens (the first block) or
    replacing the previous block's (VPT-deep)."""

    def __init__(self, count: int, layout: TransformerLayout, dropout: float, insert: bool):
        super().__init__()
        bound = math.sqrt(6.0 / (3 * layout.patch_pixels + layout.dim))  # Jia et al.'s init
        self.tokens = nn.Parameter(torch.empty(1, count, layout.dim).uniform_(-bound, bound))
        self.dropout = nn.Dropout(dropout)
        self.prefix, self.insert = layout.prefix_tokens, insert

    def before_block(self, block: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        tokens, *rest = args
        batch = tokens.shape[0]  # not len(tokens): an export traces it as a constant
        prompts = self.dropout(self.tokens.to(tokens.dtype)).expand(batch, -1, -1)
        after = self.prefix if self.insert else self.prefix + self.tokens.shape[1]
        return (torch.cat([tokens[:, : self.prefix], prompts, tokens[:, after:]], dim=1), *rest)


@dataclass(frozen=True)
class DropPrompts:
    """The last block's forward hook: the prompt tokens leave, pooling sees what it saw."""

    prefix: int
    count: int

    def __call__(self, block: nn.Module, args: tuple[Any, ...], output: torch.Tensor):
        return torch.cat([output[:, : self.prefix], output[:, self.prefix + self.count :]], dim=1)


def insert_prompts(network: nn.Module, arch: str, count: int, deep: bool, dropout: float) -> None:
    layout = transformer_layout(network)
    if layout is None:
        raise UserError(
            f"freeze=vpt (visual prompt tuning) needs a vision transformer (torchvision's "
            f"vit_*, a timm VisionTransformer); {arch} has no transformer blocks; use "
            "freeze=lora, bitfit or adapter"
        )
    for index, block in enumerate(layout.blocks if deep else layout.blocks[:1]):
        prompts = Prompts(count, layout, dropout, insert=index == 0)
        block.add_module("vpt", prompts)
        block.register_forward_pre_hook(prompts.before_block)
    layout.blocks[-1].register_forward_hook(DropPrompts(layout.prefix_tokens, count))


# --- adapters ------------------------------------------------------------------------------


class BottleneckAdapter(nn.Module):
    """h + up(gelu(down(h))) on the last dimension; `up` starts at zero (identity)."""

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(functional.gelu(self.down(hidden)))

    def after_mlp(self, mlp: nn.Module, args: tuple[Any, ...], output: torch.Tensor):
        return self(output)


def insert_adapters(network: nn.Module, arch: str, bottleneck: int) -> None:
    outputs = _mlp_outputs(network)
    if not outputs:
        raise UserError(
            f"freeze=adapter needs a ViT or a ConvNeXt (blocks with an MLP); {arch} has none; "
            "use freeze=lora or bitfit"
        )
    for block, mlp, dim in outputs:
        adapter = BottleneckAdapter(dim, bottleneck)
        block.add_module("adapter", adapter)
        mlp.register_forward_hook(adapter.after_mlp)


def _mlp_outputs(network: nn.Module) -> list[tuple[nn.Module, nn.Module, int]]:
    """(block, the module whose output is the block's MLP output, its width), channels last."""
    from torchvision.models.convnext import CNBlock

    layout = transformer_layout(network)
    if layout is not None:
        return [(block, block.mlp, layout.dim) for block in layout.blocks]
    found = []
    for module in network.modules():
        if isinstance(module, CNBlock):  # its MLP's second linear layer, channels last
            found.append((module, module.block[5], module.block[5].out_features))
        elif _from_timm(module) and type(module).__name__ == "ConvNeXtBlock":
            fc2 = module.mlp.fc2
            if isinstance(fc2, nn.Linear):  # conv_mlp=True models compute channels first
                found.append((module, module.mlp, fc2.out_features))
    return found
