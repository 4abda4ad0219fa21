"""Talking to a tracking store: which one, whether a server answers, and calls that wait
while a sqlite file is locked (parallel sweep workers share one) or while a server is away.

Each MLflow HTTP request tries once, for at most 15 s, as our callers wait themselves;
MLflow's own client would retry each for ~4 minutes. MLflow reads these settings from the
environment per request, so they hold for the whole process (other MLflow clients in it
too) once a Tracker uses a server; a value the user set is kept (FAIL_FAST_HTTP).
"""

from __future__ import annotations

import functools
import os
import random
import re
import sys
import time

import requests
from mlflow.exceptions import RestException
from mlflow.tracking import MlflowClient

from transferlab.errors import UserError
from transferlab.scrub import without_url_credentials

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PROBE_TIMEOUT = 5.0  # seconds a tracking server or database has to answer before a refusal
DATABASES = ("postgresql", "mysql")  # URL schemes of SQLAlchemy stores on a server
SERVER_WAIT = 60.0  # seconds calls wait for a tracking server that went away, per outage
MAX_PAUSE = 8.0  # the longest pause between two tries of a server that is down
FAIL_FAST_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def tracking_uri(configured: str | None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


class ServerUnreachable(UserError):
    """The tracking server did not answer again within the wait for it."""


class RetryingClient:
    """An MlflowClient whose calls wait and retry while the store is locked (sqlite lets
    one process write at a time, and parallel sweep workers share one file) and, given a
    `server_wait` (connect), while the tracking server is down: up to that many seconds per
    outage, counted from the first call that found it down, so that calls in a row wait for
    it once, not each in turn."""

    ATTEMPTS = 10

    def __init__(self, client: MlflowClient, server_wait: float = 0):
        self._client = client
        self.server_wait = server_wait
        self.down_since: float | None = None  # when a call found the server down

    def without_waiting(self) -> RetryingClient:
        """The same store, failing at once while the server is down: for a caller that
        tries again later itself (MetricWriter)."""
        return RetryingClient(self._client)

    def __getattr__(self, name: str):
        if name == "_client":  # not set yet while unpickling (joblib workers)
            raise AttributeError(name)
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args, **kwargs):
            return self._waiting_for_server(
                functools.partial(self._unlocked, attribute, *args, **kwargs)
            )

        return call

    def _waiting_for_server(self, attempt):
        pause = 0.5
        while True:
            try:
                result = attempt()
            except Exception as error:
                outage = server_outage(error)
                if outage is None or self.server_wait <= 0:
                    raise
                left = self._wait_left(outage)
                if left <= 0:
                    raise ServerUnreachable(
                        f"the tracking server {self._client.tracking_uri} has not answered "
                        f"for {self.server_wait:g} s ({outage})"
                    ) from error
                time.sleep(min(pause, left))
                pause = min(2 * pause, MAX_PAUSE)
            else:
                self.down_since = None
                return result

    def _wait_left(self, outage: str) -> float:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            print(
                f"waiting up to {self.server_wait:g} s for the tracking server "
                f"{without_url_credentials(self._client.tracking_uri)} ({outage})...",
                file=sys.stderr,
            )
        return self.down_since + self.server_wait - now

    def _unlocked(self, attribute, *args, **kwargs):
        for attempt in range(self.ATTEMPTS - 1):
            try:
                return attribute(*args, **kwargs)
            except Exception as err:
                if "database is locked" not in str(err):
                    raise
                time.sleep(0.05 * 2**attempt * (1 + random.random()))
        return attribute(*args, **kwargs)


def connect(uri: str, server_wait: float = SERVER_WAIT) -> RetryingClient:
    """A client of the store at `uri`; a tracking server that does not answer is refused
    at once, and each request to one tries once (FAIL_FAST_HTTP): callers wait themselves."""
    check_reachable(uri)
    if uri.startswith(("http://", "https://")):
        for name, value in FAIL_FAST_HTTP.items():
            os.environ.setdefault(name, value)
    return RetryingClient(MlflowClient(tracking_uri=uri), server_wait)


def server_outage(error: BaseException | None) -> str | None:
    """Why a call failed, where the tracking server is down, unreachable or failing (5xx,
    429: worth trying again later); None where the store refused what was sent."""
    while error is not None:
        if isinstance(error, requests.Timeout):
            return "no answer in time"
        if isinstance(error, requests.ConnectionError):
            return _connection_failure(error)
        if isinstance(error, requests.exceptions.RetryError):
            status = re.search(r"too many (\d+) error responses", str(error))
            return f"HTTP {status.group(1)}" if status else "HTTP error"
        if isinstance(error, RestException) and error.get_http_status_code() >= 500:
            return f"HTTP {error.get_http_status_code()}"
        error = error.__cause__ or error.__context__
    return None


def check_reachable(uri: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Refuses a tracking server or database that does not answer, before any training:
    MLflow's own client would retry for minutes and then fail mid-run. Files need no probe."""
    if is_database(uri):
        hint = f". Start it, or use a local store: tracking.uri={DEFAULT_TRACKING_URI}"
        check_database("tracking.uri", uri, timeout, hint)
        return
    if not uri.startswith(("http://", "https://")):
        return
    try:
        response = requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except requests.exceptions.SSLError:
        return  # it answers; TLS is MLflow's to check, with its own settings
    except requests.Timeout:
        raise _unreachable(uri, f"no answer within {timeout:g} s") from None
    except requests.ConnectionError as error:
        raise _unreachable(uri, _connection_failure(error)) from None
    if response.status_code in (502, 503, 504):  # a proxy in front of a server that is down
        raise _unreachable(uri, f"HTTP {response.status_code} {response.reason}")


def is_database(url: str) -> bool:
    """A SQLAlchemy URL of a database server (`postgresql+psycopg2://`, `mysql://`)."""
    return url.partition("://")[0].partition("+")[0] in DATABASES


def check_database(setting: str, url: str, timeout: float = PROBE_TIMEOUT, hint: str = "") -> None:
    """Refuses a database (tracking.uri, an Optuna storage) that does not take a connection,
    in one line naming `setting` and the URL without its credentials."""
    reason = _database_unreachable(url, timeout)
    if reason is not None:
        raise UserError(f"{setting}={without_url_credentials(url)}: {reason}{hint}")


def _database_unreachable(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why the database server at `url` does not take a connection within `timeout`
    (libpq's own default waits forever for a host that drops packets); None when it does."""
    from sqlalchemy import create_engine, exc
    from sqlalchemy.pool import NullPool

    try:
        engine = create_engine(
            url, poolclass=NullPool, connect_args={"connect_timeout": max(2, round(timeout))}
        )
    except ImportError as error:  # SQLAlchemy 2.1 opens postgresql:// with psycopg 3
        return f"its driver is not installed ({error}); psycopg2 is: postgresql+psycopg2://..."
    except exc.ArgumentError as error:
        return f"not a database URL ({error})"
    try:
        with engine.connect():
            return None
    except exc.DBAPIError as error:
        first = str(error.orig).strip().partition("\n")[0] or type(error.orig).__name__
        return f"the database does not accept the connection ({first})"
    finally:
        engine.dispose()


def _connection_failure(error: requests.ConnectionError) -> str:
    """'connection refused' out of requests' nested message about retries and pools."""
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(error))
    return found.group(1).strip().lower() if found else "cannot connect"


def _unreachable(uri: str, reason: str) -> UserError:
    scheme, _, rest = uri.partition("://")
    port = re.match(r"[^/]*:(\d+)", rest)
    port = port.group(1) if port else "443" if scheme == "https" else "80"
    return UserError(
        f"tracking.uri={uri}: the MLflow tracking server does not answer ({reason}). "
        f"Start it (mlflow server --host 127.0.0.1 --port {port}) or use a local store: "
        f"tracking.uri={DEFAULT_TRACKING_URI}"
    )
