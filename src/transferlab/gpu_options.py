"""transferlab's own node in the `trainer` group: `trainer.gpu.{channels_last, compile}`.

They are not Lightning `Trainer` arguments: `trainer_arguments` takes the `gpu` node off the
trainer node, and `GpuOptions`, a callback whose signature is the node's keys, applies them
to the module when a fit or a test sets it up (before Lightning moves it to its device).

- `channels_last`: a CNN backbone and its input batches in NHWC memory layout, which
  tensor cores and cuDNN's fastest convolutions want under mixed precision. Transformers
  (ViT, anything with attention layers) are left as they are.
- `compile`: `torch.compile` on the backbone, in place (`nn.Module.compile`, so parameter
  names, checkpoints and `backbone.pt` stay the same). Where torch.compile cannot work here
  (see `compile_unsupported_reason`), one warning says why and the run goes on in eager mode.

Batches reach the GPU with `non_blocking=True` already: Lightning's
`LightningModule.transfer_batch_to_device` (pytorch_lightning/core/hooks.py) calls
`lightning_fabric.utilities.apply_func.move_data_to_device`, which passes
`non_blocking=True` for every device but CPU and MPS. With the pinned host memory the data
module uses on a GPU, those copies overlap with compute.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

_warned: set[str] = set()  # one warning per reason and process (a run has several stages)


def trainer_arguments(trainer: DictConfig) -> tuple[DictConfig, dict[str, bool]]:
    """The trainer node without its `gpu` node (what Lightning's Trainer takes), and that
    node's values (an absent node or key: off, as in configs written before they existed)."""
    node = OmegaConf.to_container(trainer, resolve=True)
    options = node.pop("gpu", None) or {}
    return OmegaConf.create(node), options


class GpuOptions(pl.Callback):
    """Applies `trainer.gpu.channels_last` / `trainer.gpu.compile` to the backbone once,
    at the first setup (fit, or a test on its own)."""

    def __init__(self, channels_last: bool = False, compile: bool = False):
        self.channels_last = channels_last
        self.compile = compile
        self._applied: set[int] = set()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        backbone = getattr(pl_module, "backbone", None)
        if backbone is None or id(backbone) in self._applied:
            return
        self._applied.add(id(backbone))
        if not any(p.numel() for p in backbone.parameters()):
            return  # features computed beforehand (frozen-feature cache): nothing to speed up
        if self.channels_last and is_cnn(backbone):
            use_channels_last(backbone)
        if self.compile:
            compile_in_place(backbone, device_type(trainer))


def is_cnn(network: nn.Module) -> bool:
    """Convolutions and no attention: ViT's patch embedding is a convolution too."""
    modules = list(network.modules())
    has_conv = any(isinstance(m, nn.Conv2d) for m in modules)
    has_attention = any(
        isinstance(m, nn.MultiheadAttention) or type(m).__name__.endswith(("Attention", "Attn"))
        for m in modules
    )
    return has_conv and not has_attention


def use_channels_last(backbone: nn.Module) -> None:
    """Weights in NHWC now; each input batch converted as it enters the backbone (on its
    device, after Lightning's transfer), in training, validation and test alike."""
    backbone.to(memory_format=torch.channels_last)
    backbone.register_forward_pre_hook(_channels_last_input)


def _channels_last_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    images = args[0] if args else None
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        return None
    return (images.contiguous(memory_format=torch.channels_last), *args[1:])


def device_type(trainer: pl.Trainer) -> str:
    return trainer.strategy.root_device.type


def compile_in_place(module: nn.Module, device: str) -> bool:
    """`module.compile()`, or one warning naming why not and eager mode. True if compiled."""
    reason = compile_unsupported_reason(device)
    if reason is not None:
        if reason not in _warned:
            _warned.add(reason)
            warnings.warn(
                f"trainer.gpu.compile=true, but torch.compile cannot run here: {reason}; "
                "training in eager mode",
                UserWarning,
                stacklevel=2,
            )
        return False
    module.compile()
    return True


@functools.cache
def compile_unsupported_reason(device: str) -> str | None:
    """Why torch.compile (its default backend, inductor) cannot run on `device`, or None.

    Dynamo must support this Python and platform; inductor needs a working C++ compiler
    for CPU code and Triton for GPU code. Those checked, a tiny function is compiled and
    run on the device, so anything else that breaks inductor shows here rather than in the
    middle of training. Cached: asked once per device and process.
    """
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return (
            "TorchDynamo does not support this Python or platform "
            "(torch._dynamo.is_dynamo_supported() is False)"
        )
    if device == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "inductor needs Triton for CUDA code, and it is not installed"
    elif device == "cpu":
        from torch._inductor import cpp_builder

        try:
            cpp_builder.get_cpp_compiler()
        except Exception as error:
            return f"inductor needs a C++ compiler for CPU code: {_first_line(error)}"
    try:
        probe = torch.compile(_probe, backend="inductor", fullgraph=True)
        probe(torch.ones(4, device=device))
    except Exception as error:
        return f"compiling a test function failed: {type(error).__name__}: {_first_line(error)}"
    return None


def _probe(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x * 2 + 1).sum()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
