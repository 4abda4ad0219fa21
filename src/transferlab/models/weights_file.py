"""`backbone.weights_path`: a state dict from a local file or an MLflow `runs:/` / `models:/`
URI, loaded into a network whose classifier is fitted to the file's classes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from transferlab.errors import UserError
from transferlab.models.backbone import replace_submodule
from transferlab.safe_load import load_tensors
from transferlab.tracking.digests import ROLE_TAG, check_recorded_digest, digest_tag, file_sha256
from transferlab.tracking.logged_model import BACKBONE_ARTIFACT, BACKBONE_FILE

if TYPE_CHECKING:
    from mlflow.entities import LoggedModel

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
    """A local path as given (the user's own file); an MLflow `runs:/` or `models:/` URI
    downloaded to a temporary file, removed after use (a sweep of transfer runs would
    otherwise fill /tmp), and checked against the sha256 its run recorded. A `models:/` URI
    of a transferlab run's logged model (registered or not) gives its backbone's state
    dict, checked against the sha256 recorded with the model; another `models:/` version
    whose source is no run's artifact has nothing to check it against.

    Every transferlab run logs `backbone.pt`, so `runs:/<run_id>/backbone.pt` starts from the
    weights another run trained. The store is MLflow's current one ($MLFLOW_TRACKING_URI).
    """
    if not path.startswith(MLFLOW_URI_SCHEMES):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="transferlab-weights-") as folder:
        model = _transferlab_logged_model(path)
        if model is not None:
            yield str(_logged_backbone(path, model, folder))
            return
        uri = _underlying_uri(path)
        downloaded = Path(_download(path, uri, folder))
        local = downloaded if downloaded.is_file() else _single_weights_file(path, downloaded)
        if uri.startswith("runs:/"):
            _check_run_digest(path, uri, local.relative_to(downloaded).as_posix(), local)
        yield str(local)


def _transferlab_logged_model(path: str) -> LoggedModel | None:
    """The logged model behind a `models:/NAME@alias`, `models:/NAME/VERSION` or
    `models:/<model id>` URI, where it is a transferlab run's (it records its backbone's
    sha256); None for anything else, resolved as before."""
    if not path.startswith("models:/"):
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.utils.models import get_model_name_and_version
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        found = get_model_name_and_version(client, path)
        if len(found) == 2:  # a registered version: its source names the logged model
            found = get_model_name_and_version(client, client.get_model_version(*found).source)
    except MlflowException:
        return None  # no such version, or a source of another kind: resolved as before
    if len(found) != 1:
        return None
    try:
        model = client.get_logged_model(found[0])
    except MlflowException as err:
        raise _unresolved(path, err) from err
    return model if digest_tag(BACKBONE_FILE) in model.tags else None


def _logged_backbone(path: str, model: LoggedModel, folder: str) -> Path:
    """The backbone's state dict in a transferlab logged model, checked against the sha256
    recorded with the model: what is read back from a store is data, replaceable."""
    uri = f"{model.artifact_location.rstrip('/')}/{BACKBONE_ARTIFACT}"
    local = Path(_download(path, uri, folder))
    expected, found = model.tags[digest_tag(BACKBONE_FILE)], file_sha256(local)
    if found != expected:
        raise UserError(
            f"backbone.weights_path={path}: {BACKBONE_ARTIFACT} of model {model.model_id} has "
            f"sha256 {found}, not the {expected} recorded with it (replaced since it was "
            "logged): refused; download it and pass its local path if you trust it"
        )
    return local


def _underlying_uri(path: str) -> str:
    """A `models:/` URI as the version's own source: one registered from a single file
    (runs:/<id>/backbone.pt) downloads as an empty folder through its models:/ URI."""
    if not path.startswith("models:/"):
        return path
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    try:
        return ModelsArtifactRepository.get_underlying_uri(path)
    except MlflowException as err:
        raise _unresolved(path, err) from err


def _download(path: str, uri: str, folder: str) -> str:
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    try:
        return download_artifacts(artifact_uri=uri, dst_path=folder)
    except (MlflowException, OSError) as err:
        raise _unresolved(path, err) from err


def _unresolved(path: str, err: Exception) -> UserError:
    reason = str(err).partition("\n")[0]
    return UserError(f"backbone.weights_path={path} could not be resolved: {reason}")


def _check_run_digest(path: str, uri: str, inside: str, local: Path) -> None:
    """A transferlab run's weights must be the file it wrote (tracking.digests). A run of
    another making (a user's own MLflow run) records no digest: checked where it has one."""
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
    from mlflow.tracking import MlflowClient

    run_id, folder = RunsArtifactRepository.parse_runs_uri(uri)
    parts = ((folder or "").strip("/"), inside)  # runs:/<id>/ names no folder: None
    artifact = "/".join(part for part in parts if part not in ("", "."))
    tags = MlflowClient().get_run(run_id).data.tags
    if ROLE_TAG in tags or digest_tag(artifact) in tags:
        remedy = "download it and pass its local path if you trust it"
        check_recorded_digest(
            run_id, tags, artifact, local, f"backbone.weights_path={path}", remedy
        )


def _single_weights_file(uri: str, folder: Path) -> Path:
    """A URI naming a folder (a run's artifacts, a registered model): its one weights file."""
    found = sorted(p for p in folder.rglob("*") if p.suffix in WEIGHTS_SUFFIXES and p.is_file())
    if len(found) != 1:
        names = [str(p.relative_to(folder)) for p in found[:3]]
        raise UserError(
            f"backbone.weights_path={uri} is a folder with {len(found)} .pt/.pth files "
            f"{names}, not one; name the file in the URI"
        )
    return found[0]


def _fit_classifier_to(network: nn.Module, classifier: str, state: dict) -> None:
    """A source trained on other classes: give the network a classifier of the file's shape."""
    weight = state.get(f"{classifier}.weight")
    current = network.get_submodule(classifier)
    if weight is not None and weight.ndim == 2 and weight.shape != current.weight.shape:
        out_features, in_features = weight.shape
        bias = f"{classifier}.bias" in state
        replace_submodule(network, classifier, nn.Linear(in_features, out_features, bias=bias))
