"""`python -m transferlab.export RUN_ID --format onnx|torchscript --out DIR` (console script
`transferlab-export`): a run's best checkpoint as one file that serves without transferlab.

The model is rebuilt from what MLflow recorded for that run: its stage's resolved config
(`config.yaml`: for a source or scratch stage it differs from the invocation's) and its
`checkpoints/best.ckpt`, refused unless it is the file the run wrote (its recorded sha256).
A backbone that never trained (the frozen-feature cache) is not in the checkpoint: it is
rebuilt from the config's weights (`weights`, `weights_path`, or the seeded random init), as
the run built it. A parameter-efficient run's checkpoint holds only what trained: the base
is rebuilt the same way, checked against the checkpoint's base sha256, and LoRA is merged
into it, so the file is the plain network; VPT's prompts and adapters stay as layers of
their own (ONNX and TorchScript both hold them). The exported file is checked against
PyTorch on a batch of the run's test images, and logged to the run under `export/` with
`preprocessing.json` (input shape, resizing, mean / std, class names, the adaptation).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferlab.errors import UserError, exits_on_user_error, one_of
from transferlab.export_formats import EXPORTERS, FILES, INPUT_NAME, OUTPUT_NAME
from transferlab.finetune.adapted_checkpoint import BASE_KEY, restore_base_weights
from transferlab.runtime import setup
from transferlab.safe_load import load_tensors
from transferlab.tracking.digests import check_recorded_digest
from transferlab.tracking.recorded import STAGE_CONFIG, recorded_file, recorded_run
from transferlab.trusted_configs import SEARCHPATH_HELP, searching, trusted_config

if TYPE_CHECKING:
    import torch
    from mlflow.entities import Run
    from omegaconf import DictConfig

    from transferlab.data.module import TransferDataModule
    from transferlab.models.inference_cost import Classifier

ARTIFACT_FOLDER = "export"
CHECKPOINT = "checkpoints/best.ckpt"
NETWORK = "backbone.network"  # the backbone's keys in a checkpoint
PREPROCESSING = "preprocessing.json"


@dataclass(frozen=True)
class Exported:
    model: Path
    preprocessing: Path
    max_abs_diff: float
    checked_images: int


def export_run(
    run_id: str,
    fmt: str,
    out: str | Path,
    tracking_uri: str | None = None,
    searchpath: tuple[str, ...] = (),
) -> Exported:
    """Exports `run_id`'s best checkpoint to `out`/model.onnx or model.pt, checks it, writes
    `preprocessing.json` beside it and logs both to the run under `export/`. `searchpath`:
    the user's own config folders, whose components the run may use."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from transferlab.tracking.store import RetryingClient
    from transferlab.tracking.store import tracking_uri as default_uri

    if fmt not in FILES:
        raise UserError(f"--format {fmt!r} is unknown; use {one_of(FILES)}")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = default_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)  # a runs:/ or models:/ weights_path resolves in this store
    client = RetryingClient(MlflowClient(uri))
    run = recorded_run(client, run_id, f"cannot export {run_id}")
    with searching(searchpath):
        cfg = _stage_config(client, run)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = _checkpoint(client, run, scratch)
    model, data = rebuild(cfg, checkpoint, run)
    images = _test_batch(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / FILES[fmt]
    diff = EXPORTERS[fmt](model, images, path)
    adaptation = _adaptation(cfg, run, checkpoint)
    preprocessing = write_preprocessing(out / PREPROCESSING, cfg, data, images, run_id, adaptation)
    for file in (path, preprocessing):
        client.log_artifact(run_id, str(file), ARTIFACT_FOLDER)
    return Exported(path, preprocessing, diff, len(images))


def rebuild(
    cfg: DictConfig, checkpoint: dict[str, Any], run: Run
) -> tuple[Classifier, TransferDataModule]:
    """The run's backbone + head with its best weights, in eval mode, and its data; a
    parameter-efficient run's LoRA merged into the base weights."""
    import torch

    from transferlab.builders import build_backbone_and_data
    from transferlab.components import build
    from transferlab.models.inference_cost import Classifier

    adapted = checkpoint.get(BASE_KEY) is not None  # what trained, on top of the base
    saved = checkpoint["state_dict"]
    whole_backbone = not adapted and any(k.startswith(NETWORK + ".") for k in saved)
    _reachable_backbone_weights(cfg, run, needed=not whole_backbone)
    backbone, data = build_backbone_and_data(cfg)  # seeded: the run's random init, if any;
    # a parameter-efficient run's base adapted as in training (backbone.base_sha256 set)
    head = build(cfg.head, "head", in_features=backbone.feature_dim, num_classes=data.num_classes)
    model = Classifier(backbone.network, head)
    whole = {f"{NETWORK}.{k}": v for k, v in model.network.state_dict().items()}
    restore_base_weights(checkpoint, backbone, whole)  # refused on other base weights
    state = checkpoint["state_dict"]
    trained = whole_backbone or adapted
    parts = {"head": model.head, **({NETWORK: model.network} if trained else {})}
    for prefix, module in parts.items():
        weights = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
        try:
            module.load_state_dict(weights)
        except RuntimeError as err:
            reason = str(err).split("\n\t", 1)[-1].split("\n")[0]
            raise UserError(
                f"{CHECKPOINT} of run {run.info.run_id} does not fit the model its "
                f"{STAGE_CONFIG} builds: {reason}"
            ) from err
    if backbone.base_sha256 is not None:
        from transferlab.finetune.peft_layers import merge_lora

        with torch.no_grad():  # weights changed in place: no graph to record
            merge_lora(model.network)
    return model.eval(), data


def write_preprocessing(
    path: Path,
    cfg: DictConfig,
    data: TransferDataModule,
    images: torch.Tensor,
    run_id: str,
    adaptation: dict[str, Any] | None,
) -> Path:
    """What a server must do to an image before the model sees it, and what comes out;
    `adaptation`: a parameter-efficient run's method, base weights and whether LoRA was
    merged into them."""
    prep = data.preprocessing
    steps = ["decode, convert to RGB (3 channels), scale pixel values to [0, 1]"]
    if prep.input_size is None:
        steps.append(f"keep the size the model was trained on ({_size(images)})")
    else:
        steps.append(f"resize the shorter side to {prep.resize_size or prep.input_size} (bilinear)")
        steps.append(f"centre-crop to {prep.input_size}x{prep.input_size}")
    steps.append("normalise each channel: (x - mean) / std")
    content = {
        "run_id": run_id,
        "backbone": cfg.backbone.get("arch") or cfg.backbone.get("name"),
        "input": {
            "name": INPUT_NAME,
            "shape": [None, *images.shape[1:]],  # None: any batch size
            "layout": "NCHW",
            "dtype": "float32",
        },
        "output": {"name": OUTPUT_NAME, "shape": [None, data.num_classes], "meaning": "logits"},
        "channels": int(images.shape[1]),
        "input_size": prep.input_size,
        "resize_size": prep.resize_size,
        "mean": list(prep.mean),
        "std": list(prep.std),
        "steps": steps,
        "class_names": list(data.class_names),
        "adaptation": adaptation,
    }
    path.write_text(json.dumps(content, indent=2) + "\n")
    return path


# --- what MLflow recorded -----------------------------------------------------------------


def _stage_config(client, run: Run) -> DictConfig:
    from transferlab.components import is_classical_head, target_name

    missing = "not a transferlab training run (a sweep's parent? export one of its runs)"
    cfg = trusted_config(client, run, STAGE_CONFIG, missing, f"export {run.info.run_id}")
    if is_classical_head(cfg.head):
        head = run.data.params.get("head") or target_name(cfg.head)  # its choice, as typed
        raise UserError(
            f"run {run.info.run_id} has a scikit-learn head (head={head}): it is "
            "saved with skops (artifact model/) and is not exported; export a run with a "
            "neural head (linear, mlp)"
        )
    return cfg


def _checkpoint(client, run: Run, scratch: str) -> dict[str, Any]:

    role = run.data.tags.get("transferlab.role", "")
    missing = (
        "a cross-validation parent run; export one of its fold runs"
        if role.endswith("-cv")
        else "trained with callbacks that save no checkpoint (callbacks=none?)"
    )
    local = recorded_file(client, run, CHECKPOINT, scratch, missing)
    check_recorded_digest(run.info.run_id, run.data.tags, CHECKPOINT, local, "export")
    return load_tensors(local, f"{CHECKPOINT} of run {run.info.run_id}")


def _adaptation(cfg: DictConfig, run: Run, checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """A parameter-efficient run's method (its freeze choice, as typed), the base weights
    it sits on, and whether LoRA was merged into them (rebuild merges every LoRA layer)."""
    from transferlab.components import build, target_name

    base = checkpoint.get(BASE_KEY)
    if base is None:
        return None
    method = run.data.params.get("freeze") or target_name(cfg.freeze)
    return adaptation_record(method, base, build(cfg.freeze, "freeze"))


def adaptation_record(method: str, base: dict[str, Any], freeze: Any) -> dict[str, Any]:
    """`preprocessing.json`'s adaptation: the method, its base weights (`sha256`, `source`)
    and whether LoRA was merged into them (every LoRA layer is, before export)."""
    from transferlab.finetune.peft import LoRA

    return {
        "method": method,
        "base_sha256": base["sha256"],
        "base_source": base["source"],
        "lora_merged": isinstance(freeze, LoRA),
    }


def _reachable_backbone_weights(cfg: DictConfig, run: Run, needed: bool) -> None:
    """A transfer run's weights_path is a local copy of its source run's `backbone.pt`,
    which may be gone (another machine, a cleaned output folder): read it from MLflow.
    Not `needed` (the checkpoint holds the trained backbone), it is simply left out."""
    from transferlab.models.weights_file import MLFLOW_URI_SCHEMES

    path = cfg.backbone.get("weights_path")
    if path is None or path.startswith(MLFLOW_URI_SCHEMES) or os.path.isfile(path):
        return
    source = run.data.tags.get("transferlab.source_run_id")
    if source is not None:
        cfg.backbone.weights_path = f"runs:/{source}/backbone.pt"
    elif not needed:
        cfg.backbone.weights_path = None
    else:
        raise UserError(
            f"run {run.info.run_id}'s backbone never trained, and its weights "
            f"(backbone.weights_path={path}) no longer exist; put the file back there"
        )


def _test_batch(data: TransferDataModule) -> torch.Tensor:
    images, _ = next(iter(data.test_dataloader()))
    return images.float()


def _size(images: torch.Tensor) -> str:
    return f"{images.shape[-2]}x{images.shape[-1]}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_id", help="the MLflow run whose best checkpoint is exported")
    parser.add_argument("--format", default="onnx", help=f"{one_of(FILES)} (default: onnx)")
    parser.add_argument("--out", required=True, help="folder for the model and preprocessing.json")
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI "
                        "or sqlite:///mlflow.db)")  # fmt: skip
    parser.add_argument("--searchpath", action="append", default=[], help=SEARCHPATH_HELP)
    args = parser.parse_args(argv)
    setup()
    with exits_on_user_error():
        exported = export_run(
            args.run_id, args.format, args.out, args.tracking_uri, tuple(args.searchpath)
        )
    print(f"exported {exported.model} and {exported.preprocessing}")
    print(
        f"max abs difference from PyTorch on {exported.checked_images} test images: "
        f"{exported.max_abs_diff:.3g}"
    )
    print(f"logged to run {args.run_id} under {ARTIFACT_FOLDER}/")


if __name__ == "__main__":
    main()
