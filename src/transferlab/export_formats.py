"""The formats `transferlab-export` writes: each exporter writes the model to its file,
loads that file back, runs it on the run's test images and returns its largest difference
from PyTorch's outputs (refused above TOLERANCE, then nothing is logged).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferlab.errors import UserError

if TYPE_CHECKING:
    import torch

    from transferlab.models.inference_cost import Classifier

FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
INPUT_NAME, OUTPUT_NAME = "images", "logits"
TOLERANCE = 1e-4  # max abs difference, relative to the logits' scale when that is above 1


def to_onnx(model: Classifier, images: torch.Tensor, path: Path) -> float:
    """torch.export-based exporter (onnxscript), batch dimension dynamic; checked with
    onnxruntime on the CPU."""
    import onnxruntime
    import torch

    batch = torch.export.Dim("batch")
    torch.onnx.export(
        model,
        (_example(images),),
        str(path),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: batch},),
        external_data=False,  # one self-contained file (fine below protobuf's 2 GB)
        verbose=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (outputs,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
    return _checked(model, images, torch.from_numpy(outputs), path)


def to_torchscript(model: Classifier, images: torch.Tensor, path: Path) -> float:
    """torch.jit.trace on a batch of 2, checked with torch.jit.load on the whole test batch:
    a traced batch size that stuck would show there."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        # Python-level branches traced as constants: the check below, on another batch
        # size, is what shows whether the trace generalises
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        with torch.inference_mode():
            traced = torch.jit.trace(model, _example(images))
        traced.save(str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.inference_mode():
            outputs = loaded(images)
    return _checked(model, images, outputs, path)


EXPORTERS: dict[str, Callable[[Any, Any, Path], float]] = {
    "onnx": to_onnx,
    "torchscript": to_torchscript,
}


def _checked(model: Classifier, images: torch.Tensor, outputs: torch.Tensor, path: Path) -> float:
    import torch

    with torch.inference_mode():
        expected = model(images)
    diff = float((outputs.float() - expected).abs().max())
    allowed = TOLERANCE * max(1.0, float(expected.abs().max()))
    if not diff <= allowed:  # NaN too
        raise UserError(
            f"{path} gives outputs {diff:.3g} away from PyTorch's on {len(images)} test images "
            f"(more than {allowed:.3g}); it is not logged"
        )
    return diff


def _example(images: torch.Tensor) -> torch.Tensor:
    """Two images: a batch of one would fix the batch dimension at 1."""
    import torch

    return torch.cat([images, images])[:2]
