"""`make server` and `make dashboard`: a team's store on PostgreSQL, on this machine.

`make server` runs `mlflow server` on 127.0.0.1 with a PostgreSQL backend store and proxied
artifacts (under STORE_DIR/artifacts). The PostgreSQL is pgserver's bundled one under
STORE_DIR/pg (no root, no network: it listens on a unix socket only), started or reused,
with a database `mlflow` for the tracking server and `optuna` for sweeps
(hydra.sweeper.storage); BACKEND_URI names a team's existing PostgreSQL instead. It stops
with the server unless another process still holds it (pgserver counts its users).

Everything that can be refused is checked before anything starts: the port, a team's
PostgreSQL answering. Credentials are never printed: the environment carries the backend
URL to `mlflow server`, not its command line, which `ps` shows to every user.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

from transferlab.errors import UserError, exits_on_user_error
from transferlab.scrub import without_url_credentials
from transferlab.tracking.store import check_database, is_database

DRIVER = "postgresql+psycopg2"  # SQLAlchemy 2.1 takes plain postgresql:// as psycopg 3
TRACKING_DB, OPTUNA_DB = "mlflow", "optuna"
SERVER_PORT, DASHBOARD_PORT = 5000, 8080


def check_port_free(port: int, target: str) -> None:
    """Refuses a port that another server holds on 127.0.0.1, naming the make variable."""
    if not 0 < port < 65536:
        raise UserError(f"PORT={port} is not a port number; use 1 to 65535 (make {target})")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise UserError(
                f"port {port} on 127.0.0.1 is taken ({error.strerror.lower()}); choose "
                f"another: make {target} PORT={port + 1}"
            ) from None


def check_postgres(setting: str, url: str) -> None:
    """Refuses a URL that is not PostgreSQL's or that does not take a connection."""
    if not url.startswith("postgresql"):
        raise UserError(
            f"{setting}={without_url_credentials(url)} is not a PostgreSQL URL; use "
            f"{DRIVER}://USER:PASSWORD@HOST:5432/DATABASE"
        )
    check_database(setting, url)


def local_postgres(folder: Path):
    """pgserver's PostgreSQL on `folder`: started, or the one already running there."""
    with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR unset, /tmp used
        warnings.simplefilter("ignore")
        try:
            import pgserver
        except ImportError:
            raise UserError(
                "make server needs pgserver for its own PostgreSQL: pip install -e '.[server]'"
                f", or name a team's: BACKEND_URI={DRIVER}://USER:PASSWORD@HOST/mlflow"
            ) from None

    folder.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # its INFO lines, even at exit
    return pgserver.get_server(folder, cleanup_mode="stop")


def local_url(postgres, database: str) -> str:
    """A database of pgserver's PostgreSQL as a SQLAlchemy URL: its unix socket and its
    superuser (trusted locally, no password) in the query, so no userinfo looks secret."""
    from sqlalchemy.engine import make_url

    socket_dir = make_url(postgres.get_uri()).query["host"]
    return f"{DRIVER}:///{database}?host={socket_dir}&user={postgres.postgres_user}"


def with_database(url: str, database: str) -> str:
    """`url` naming another database on the same server, with the same credentials."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=database).render_as_string(hide_password=False)


def ensure_databases(url: str, names: list[str]) -> list[str]:
    """Creates each database of `names` missing on the server of `url`; returns those that
    could not be created (a team's user may lack the right)."""
    from sqlalchemy import create_engine, exc, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    refused = []
    try:
        with engine.connect() as connection:
            for name in names:
                exists = connection.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
                ).first()
                if exists:
                    continue
                try:
                    connection.execute(text(f'CREATE DATABASE "{name}"'))
                except exc.ProgrammingError:
                    refused.append(name)
    finally:
        engine.dispose()
    return refused


def mlflow_server(
    backend: str, artifacts: Path, port: int, workers: int | None = None
) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1 with proxied artifacts; the backend URL in its
    environment (MLflow's own variable for --backend-store-uri). Its own process group, so
    that it stops as a whole (uvicorn's workers too) when this process stops it. MLflow's
    job runner (GenAI scorers, prompt optimisation: not transferlab's) stays off unless
    the environment turns it on: it costs a consumer process per job type."""
    command = [
        *(sys.executable, "-m", "mlflow", "server", "--serve-artifacts"),
        *("--artifacts-destination", str(artifacts.resolve())),
        *("--host", "127.0.0.1", "--port", str(port)),
        *(("--workers", str(workers)) if workers else ()),
    ]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    env["MLFLOW_BACKEND_STORE_URI"] = backend
    return subprocess.Popen(command, env=env, start_new_session=True)


def stop_group(server: subprocess.Popen, timeout: float = 30) -> None:
    """Stops the server's process group and waits until all of it has exited: uvicorn's
    workers hold the port until then, and `mlflow server` itself exits before them."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
    server.wait()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def serve(
    port: int, store_dir: Path, backend_uri: str | None = None, workers: int | None = None
) -> int:
    """`make server`: checks, starts PostgreSQL (unless a team's is given) and the tracking
    server, prints how to use both, and runs until stopped (Ctrl-C, SIGTERM)."""
    check_port_free(port, "server")
    if backend_uri:
        check_postgres("BACKEND_URI", backend_uri)
        backend, optuna = backend_uri, with_database(backend_uri, OPTUNA_DB)
        refused = ensure_databases(backend_uri, [OPTUNA_DB])
        where = "a team's PostgreSQL (BACKEND_URI)"
    else:
        postgres = local_postgres(store_dir / "pg")
        backend, optuna = local_url(postgres, TRACKING_DB), local_url(postgres, OPTUNA_DB)
        refused = ensure_databases(local_url(postgres, "postgres"), [TRACKING_DB, OPTUNA_DB])
        where = f"PostgreSQL in {store_dir / 'pg'} (stops with this server)"
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # as Ctrl-C: the cleanup below runs
    server = mlflow_server(backend, store_dir / "artifacts", port, workers)
    tracking = f"http://127.0.0.1:{port}"
    storage = without_url_credentials(optuna)
    print(
        f"MLflow server on {where}, artifacts in {store_dir / 'artifacts'}\n"
        f"  tracking:   tracking.uri={tracking} (or export MLFLOW_TRACKING_URI={tracking})\n"
        f"  Optuna:     hydra.sweeper.storage='{storage}'\n"
        f"  dashboard:  make dashboard STORAGE='{storage}'",
        flush=True,
    )
    if storage != optuna:
        print("  (your PostgreSQL credentials in place of <redacted>)", flush=True)
    if refused:
        print(f"  no database {', '.join(refused)} there, and this user may not create it")
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 130
    finally:  # stopped (Ctrl-C, SIGTERM): the server too, then PostgreSQL (pgserver's atexit)
        stop_group(server)


def dashboard(storage: str | None, port: int) -> None:
    """`make dashboard`: optuna-dashboard over a study storage, on 127.0.0.1 only."""
    if not storage:
        raise UserError(
            "make dashboard needs the study storage: make dashboard STORAGE=sqlite:///optuna.db "
            "(or the hydra.sweeper.storage that `make server` prints)"
        )
    check_port_free(port, "dashboard")
    if is_database(storage):
        check_database("STORAGE", storage)
    from optuna_dashboard import run_server

    print(f"optuna-dashboard on http://127.0.0.1:{port} over {without_url_credentials(storage)}")
    run_server(storage, host="127.0.0.1", port=port)


def _exit_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """`python -m transferlab.server [dashboard]`; URLs that may hold a password come
    from the environment (BACKEND_URI, STORAGE), never from the command line."""
    parser = argparse.ArgumentParser(prog="python -m transferlab.server", description=__doc__)
    parser.add_argument("command", nargs="?", choices=("server", "dashboard"), default="server")
    parser.add_argument("--port", type=int)
    parser.add_argument("--store-dir", type=Path, default=Path(".mlflow-server"))
    parser.add_argument("--workers", type=int, help="mlflow server's (default: its own)")
    args = parser.parse_args(argv)
    with exits_on_user_error():
        if args.command == "dashboard":
            dashboard(os.environ.get("STORAGE"), args.port or DASHBOARD_PORT)
            return 0
        return serve(
            args.port or SERVER_PORT, args.store_dir, os.environ.get("BACKEND_URI"), args.workers
        )


if __name__ == "__main__":
    sys.exit(main())
