"""A run's model as an MLflow 3 logged model: built, logged, linked to its run and its test
metrics, and registered.

The model is transferlab.pyfunc_classifier (MLflow's "models from code", nothing pickled)
with three artifacts: the TorchScript network (backbone + head, checked against PyTorch by
export_formats), `preprocessing.json` (transferlab.export.write_preprocessing) and the
backbone's state dict, which `backbone.weights_path=models:/NAME@alias` loads into a new run.
The state dict's sha256 is a tag of the logged model: what models/weights_file checks the
file it reads back against. Requirements are pinned here: MLflow's inference of them would
import and run the model once more.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from transferlab.errors import UserError
from transferlab.tracking.digests import ROLE_TAG, digest_tag, file_sha256

if TYPE_CHECKING:
    import torch
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models import Model
    from omegaconf import DictConfig

    from transferlab.models.inference_cost import Classifier
    from transferlab.tracking.mlflow_run import TrackedRun
    from transferlab.tracking.store import RetryingClient

MODEL_NAME = "model"  # the logged model's name in its run (the UI's Models column)
MODEL_TYPE = "image-classifier"
CODE_MODULE = "transferlab.pyfunc_classifier"  # the model's code, found without importing it
NETWORK_FILE = "network.pt"  # TorchScript
BACKBONE_FILE = "backbone.pt"  # the backbone's state dict (as a run's backbone.pt)
BACKBONE_ARTIFACT = f"artifacts/{BACKBONE_FILE}"  # where pyfunc puts it in the model
REQUIREMENTS = ("mlflow", "torch", "torchvision", "numpy", "pandas", "pillow")
EXAMPLE_SEED = 0  # the input example's pixels and the images TorchScript is checked on
CHECKED_IMAGES = 4


def check_register(cfg: DictConfig) -> None:
    """`register.name` / `register.alias` as the model registry takes them, on a run that
    has one model to register; before any run."""
    from transferlab.components import is_classical_head

    register = cfg.get("register") or {}
    name, alias = register.get("name"), register.get("alias")
    if name is None:
        if alias is not None:
            raise UserError(f"register.alias={alias} needs register.name (the registered model)")
        return
    check_registered_name(str(name), "register.name", str(alias) if alias is not None else None)
    if is_classical_head(cfg.head):
        raise UserError(
            f"register.name={name}: a scikit-learn head logs no MLflow model; use a neural "
            "head (linear, mlp)"
        )
    if cfg.cv.folds:
        raise UserError(
            f"register.name={name} with cv.folds={cfg.cv.folds}: each fold's run has a model "
            "of its own, the cross-validation none; register one afterwards: "
            "transferlab-register RUN_ID NAME"
        )


def check_registered_name(name: str, what: str, alias: str | None = None) -> None:
    """MLflow's own rules for a registered model's name and alias (mlflow.utils.validation):
    one line naming the value that breaks them."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import (
        _validate_model_alias_name,
        _validate_model_alias_name_reserved,
        _validate_model_name,
    )

    checks = [(what, name, _validate_model_name)]
    if alias is not None:
        alias_key = "register.alias" if what == "register.name" else "--alias"
        checks += [(alias_key, alias, _validate_model_alias_name)]
        checks += [(alias_key, alias, _validate_model_alias_name_reserved)]
    for key, value, check in checks:
        try:
            check(value)
        except MlflowException as err:
            reason = err.message.partition("\n")[0]
            raise UserError(
                f"{key}={value!r} is refused by the MLflow model registry: {reason}"
            ) from None


def log_run_model(
    run: TrackedRun,
    model: Classifier,
    backbone_state: Mapping[str, torch.Tensor],
    preprocessing: Path,
    test_metrics: Mapping[str, float],
    step: int,
    folder: Path,
) -> str:
    """Logs `model` (eval mode, on the CPU, float32) as the run's logged model, its test
    metrics linked to it at `step` (the step the run logged them at). Returns its id."""
    import torch
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
    from mlflow.models import Model

    network, weights = folder / NETWORK_FILE, folder / BACKBONE_FILE
    examples = _example_images(preprocessing)
    _check_and_save_torchscript(model, examples, preprocessing, network)
    torch.save(dict(backbone_state), weights)
    client = run.client
    experiment_id = client.get_run(run.run_id).info.experiment_id
    tags = {digest_tag(BACKBONE_FILE): file_sha256(weights)}  # what weights_file checks
    logged = client.create_logged_model(
        experiment_id, MODEL_NAME, run.run_id, tags=tags, model_type=MODEL_TYPE
    )
    local = Path(tempfile.mkdtemp(prefix="transferlab-model-")) / MODEL_NAME
    try:
        description = Model(
            artifact_path=logged.artifact_location,
            model_uuid=logged.model_id,
            run_id=run.run_id,
            model_id=logged.model_id,
        )
        _save_pyfunc(local, network, preprocessing, weights, examples[:1], description)
        client.log_model_artifacts(logged.model_id, str(local))
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    finally:
        shutil.rmtree(local.parent, ignore_errors=True)
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.log_outputs(run.run_id, [LoggedModelOutput(logged.model_id, step)])
    now = int(time.time() * 1000)
    linked = [
        Metric(key, float(value), now, step, model_id=logged.model_id)
        for key, value in test_metrics.items()
    ]
    run.metrics.put(linked)  # in order with the run's other metrics, as they are sent
    return logged.model_id


def _example_images(preprocessing: Path) -> list[np.ndarray]:
    """Raw uint8 H x W x 3 images of the size the network takes (no resizing needed):
    the input example, and what the TorchScript file is checked on."""
    height, width = json.loads(preprocessing.read_text())["input"]["shape"][2:]
    rng = np.random.default_rng(EXAMPLE_SEED)
    return list(rng.integers(0, 256, (CHECKED_IMAGES, height, width, 3), dtype=np.uint8))


def _check_and_save_torchscript(
    model: Classifier, examples: list[np.ndarray], preprocessing: Path, path: Path
) -> float:
    """export_formats' TorchScript exporter on the examples, normalised as preprocessing
    says (they need no resizing): traced, loaded back, compared with PyTorch."""
    import torch

    from transferlab.export_formats import to_torchscript

    prep = json.loads(preprocessing.read_text())
    pixels = torch.from_numpy(np.stack(examples)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(prep["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(prep["std"]).view(1, 3, 1, 1)
    return to_torchscript(model, (pixels - mean) / std, path)


def _save_pyfunc(
    local: Path,
    network: Path,
    preprocessing: Path,
    weights: Path,
    examples: list[np.ndarray],
    model: Model,
) -> None:
    import mlflow
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, DataType, Map, Schema

    code = importlib.util.find_spec(CODE_MODULE).origin  # imported, it would set the model
    signature = ModelSignature(
        inputs=Schema([ColSpec(AnyType(), "image")]),  # a file path or uint8 pixels
        outputs=Schema(
            [
                ColSpec(DataType.string, "class"),
                ColSpec(Map(DataType.double), "probabilities"),
            ]
        ),
    )
    with _quiet_mlflow():
        mlflow.pyfunc.save_model(
            str(local),
            python_model=code,
            artifacts={
                "network": str(network),
                "preprocessing": str(preprocessing),
                "backbone": str(weights),
            },
            signature=signature,
            input_example=pd.DataFrame({"image": [example.tolist() for example in examples]}),
            pip_requirements=[f"{name}=={_release(version(name))}" for name in REQUIREMENTS],
            mlflow_model=model,
        )


@contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Without MLflow's advice to type-hint `predict` (the signature is given) and its INFO
    line on checking the input example: a run's console keeps to what the run says."""
    logger = logging.getLogger("mlflow.pyfunc")
    level, show = logger.level, warnings.showwarning

    def others(message, *args, **kwargs) -> None:  # MLflow resets the warning filters itself
        if "type hints to the `predict` method" not in str(message):
            show(message, *args, **kwargs)

    logger.setLevel(logging.WARNING)
    warnings.showwarning = others
    try:
        yield
    finally:
        logger.setLevel(level)
        warnings.showwarning = show


def _release(installed: str) -> str:
    """torch's `2.5.1+cpu`: the local build tag is no release an index has."""
    return installed.split("+", 1)[0]


# --- the registry ---------------------------------------------------------------------------


def run_model_id(client: RetryingClient, run: Run) -> str | None:
    """The logged model a transferlab run logged (its output), or None."""
    outputs = run.outputs.model_outputs if run.outputs is not None else []
    for output in outputs:
        model = client.get_logged_model(output.model_id)
        if model.name == MODEL_NAME and model.source_run_id == run.info.run_id:
            return model.model_id
    return None


def register_run_model(
    client: RetryingClient, run_id: str, name: str, alias: str | None = None
) -> ModelVersion:
    """Registers the run's logged model as a new version of `name` (created if new),
    `alias` pointing at it. A run with no logged model is refused with the reason."""
    import mlflow

    from transferlab.tracking.recorded import recorded_run

    run = recorded_run(client, run_id, f"cannot register run {run_id}")
    model_id = run_model_id(client, run)
    if model_id is None:
        raise UserError(f"run {run_id} logged no model to register: {_why_no_model(client, run)}")
    registered = mlflow.register_model(f"models:/{model_id}", name)
    if alias is not None:
        client.set_registered_model_alias(name, alias, registered.version)
    return registered


def _why_no_model(client: RetryingClient, run: Run) -> str:
    """What kind of run it is: only a run with a neural head logs a model."""
    tags = run.data.tags
    if ROLE_TAG not in tags:
        return "it is not a transferlab training run (a sweep's parent? register one of its runs)"
    if tags[ROLE_TAG].endswith("-cv"):
        return "it is a cross-validation parent; register one of its fold runs"
    if any(a.path.endswith(".skops") for a in client.list_artifacts(run.info.run_id, "model")):
        head = run.data.params.get("head", "?")
        return f"it has a scikit-learn head (head={head}), saved with skops under model/"
    return "it saved no best checkpoint (callbacks=none?), or predates logged models"
