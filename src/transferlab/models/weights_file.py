"""`backbone.weights_path`: a state dict from a local file or an MLflow `runs:/` / `models:/`
URI, loaded into a network whose classifier is fitted to the file's classes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from transferlab.errors import UserError
from transferlab.models.backbone import replace_submodule
from transferlab.safe_load import load_tensors

MLFLOW_URI_SCHEMES = ("runs:/", "models:/")  # weights_path values resolved through MLflow
WEIGHTS_SUFFIXES = (".pt", ".pth")


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
        replace_submodule(network, classifier, nn.Linear(in_features, out_features, bias=bias))
