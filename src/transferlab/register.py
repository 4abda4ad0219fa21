"""`transferlab-register RUN_ID NAME [--alias champion]`: a run's model into the registry.

The run's MLflow model (the logged model every run with a neural head leaves) becomes a new
version of NAME, so that it serves (`mlflow models serve -m models:/NAME@champion`), loads
with `mlflow.pyfunc.load_model`, and starts a new run as
`backbone.weights_path=models:/NAME@champion`. `register.name=NAME` does the same at the
end of a training run.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from transferlab.errors import exits_on_user_error
from transferlab.runtime import setup
from transferlab.tracking.logged_model import check_registered_name, register_run_model

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion


def register(
    run_id: str, name: str, alias: str | None = None, tracking_uri: str | None = None
) -> ModelVersion:
    """Registers `run_id`'s logged model as a new version of `name`; returns the version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from transferlab.tracking.store import RetryingClient
    from transferlab.tracking.store import tracking_uri as default_uri

    check_registered_name(name, "NAME", alias)
    uri = default_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)  # mlflow.register_model's store
    return register_run_model(RetryingClient(MlflowClient(uri)), run_id, name, alias)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_id", help="the MLflow run whose model is registered")
    parser.add_argument("name", help="the registered model's name (created if new)")
    parser.add_argument("--alias", help="an alias for the new version, e.g. champion")
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI "
                        "or sqlite:///mlflow.db)")  # fmt: skip
    args = parser.parse_args(argv)
    setup()
    with exits_on_user_error():
        version = register(args.run_id, args.name, args.alias, args.tracking_uri)
    at = (
        f"models:/{args.name}@{args.alias}"
        if args.alias
        else f"models:/{args.name}/{version.version}"
    )
    print(f"registered run {args.run_id}'s model as {args.name} version {version.version}: {at}")


if __name__ == "__main__":
    main()
