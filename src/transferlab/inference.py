"""Running a trained network outside Lightning's loops (feature extraction, latency
timing): in eval mode with each module's own mode back after, and under the autocast that
Lightning's mixed precisions train with.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """Autocast for Lightning's `*-mixed` precisions; nothing for the others (`*-true` ones
    convert the weights instead)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode inside, each submodule's own mode back after (frozen BatchNorm included)."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training
