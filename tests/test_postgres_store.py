"""A team's store on PostgreSQL, as `make server` runs it: pgserver's PostgreSQL (a real
one, on a unix socket in tmp) under a real `mlflow server`, an Optuna sweep of parallel
joblib workers with its study in the same PostgreSQL, resumed from a second process, and
the tracking server stopped and restarted mid-sweep. Bad input is refused in one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.test_optuna_sweeper import trial_number
from tests.test_server_outage import Server, process_settings  # noqa: F401 - autouse fixture
from transferlab.errors import UserError
from transferlab.objective import objective_value
from transferlab.server import local_postgres, local_url, main
from transferlab.tracking.sweep import PARENT_RUN_ENV

EPOCHS = 2
TRIALS = 16  # 8 batches of 2: each joblib worker runs 8 trials
STUDY = "pg"


class StoreServer(Server):
    """`python -m transferlab.server` (what `make server` runs) on a free loopback port,
    stopped and started again like a real one; its PostgreSQL outlives it, as the test
    process holds it too."""

    def __init__(self, folder):
        super().__init__("", folder)
        port = self.uri.rpartition(":")[2]
        self.command = [
            *(sys.executable, "-m", "transferlab.server", "server", "--port", port),
            *("--store-dir", str(folder), "--workers", "1"),
        ]


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    server = local_postgres(tmp_path_factory.mktemp("store") / "pg")
    yield server
    server.cleanup()  # stops it: the last process that holds it


@pytest.fixture(scope="module")
def store(postgres):
    server = StoreServer(postgres.pgdata.parent)
    server.start()
    server.wait_until_up()
    yield server
    server.stop()


def sweep_overrides(store: StoreServer, postgres, experiment: str) -> list[str]:
    return [
        f"tracking.uri={store.uri}",
        f"experiment_name={experiment}",
        "hydra/sweeper=optuna",
        f"hydra.sweeper.storage='{local_url(postgres, 'optuna')}'",
        f"hydra.sweeper.study_name={STUDY}",
        "hydra.sweeper.sampler=random",
        "hydra.sweeper.seed=0",
        "optimizer.lr=tag(log, interval(1e-3, 1e-2))",
        f"trainer.max_epochs={EPOCHS}",
        "~callbacks.early_stopping",
        "dataset.task.classes=[0,1,2]",
        "dataset.task.train_per_class=20",
    ]


class StopsOnceRunsExist(threading.Thread):
    """Stops the tracking server once `count` child runs exist and one of them is still
    running (so that its job meets the outage), then starts it again."""

    def __init__(self, server: StoreServer, experiment: str, count: int):
        super().__init__(daemon=True)
        self.server, self.experiment, self.count = server, experiment, count
        self.sweep_ended = threading.Event()
        self.restarted_while = None  # the children's statuses when the server was stopped
        self.error: BaseException | None = None

    def run(self) -> None:
        client = MlflowClient(self.server.uri)
        try:
            while not self.sweep_ended.wait(0.3):
                found = client.get_experiment_by_name(self.experiment)
                runs = client.search_runs([found.experiment_id]) if found else []
                children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
                statuses = [r.info.status for r in children]
                if len(children) >= self.count and "RUNNING" in statuses:
                    self.server.stop()
                    self.server.start()
                    self.restarted_while = statuses
                    return
        except BaseException as error:  # reported by the test
            self.error = error


def sweeps(client: MlflowClient, experiment_id: str) -> list:
    """The sweeps' parent runs, oldest first."""
    return client.search_runs(
        [experiment_id],
        filter_string="tags.`transferlab.role` = 'sweep'",
        order_by=["attributes.start_time ASC"],
    )


def children_by_trial(client: MlflowClient, parent_id: str, experiment_id: str) -> dict:
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )
    return {trial_number(r): r for r in runs}


@pytest.mark.slow
def test_a_parallel_sweep_on_postgresql_loses_nothing_when_the_server_restarts_and_resumes(
    postgres, store, multirun, experiment, tmp_path
):
    overrides = sweep_overrides(store, postgres, experiment)
    watcher = StopsOnceRunsExist(store, experiment, count=4)
    watcher.start()
    try:
        code = multirun(
            *overrides,
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "hydra.sweeper.n_jobs=2",
            f"hydra.sweeper.n_trials={TRIALS}",
        )
    finally:
        watcher.sweep_ended.set()
        watcher.join()
    assert watcher.error is None, watcher.error
    assert watcher.restarted_while is not None, "the sweep ended before the outage"
    assert code == 0
    store.wait_until_up()

    storage = local_url(postgres, "optuna")
    trials = optuna.load_study(study_name=STUDY, storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * TRIALS
    client = MlflowClient(store.uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    (parent,) = sweeps(client, experiment_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna.study_name"] == STUDY
    children = children_by_trial(client, parent.info.run_id, experiment_id)
    assert sorted(children) == list(range(TRIALS))  # one child per trial
    for trial in trials:
        run = children[trial.number]
        assert run.info.status == "FINISHED"
        assert objective_value(run.data.metrics, "val/acc") == trial.value
        assert float(run.data.params["optimizer.lr"]) == pytest.approx(trial.params["optimizer.lr"])
        for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == list(range(EPOCHS)), (trial.number, key, steps)
        assert {"test/acc", "test/loss", "val/acc_best"} <= set(run.data.metrics)

    # A second process, same study name and storage, 2 more trials: the study goes on.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", PARENT_RUN_ENV))}
    result = subprocess.run(
        [
            *(sys.executable, "-m", "transferlab.train", "-m", *overrides),
            *(f"hydra.sweeper.n_trials={TRIALS + 2}", f"hydra.sweep.dir={tmp_path / 'again'}"),
            *("~callbacks.progress_bar", "hydra/job_logging=none"),
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{TRIALS} of {TRIALS + 2} trials finished" in result.stdout
    resumed = optuna.load_study(study_name=STUDY, storage=storage).get_trials()
    assert [(t.number, t.params, t.value) for t in resumed[:TRIALS]] == [
        (t.number, t.params, t.value) for t in trials
    ]
    assert [t.state.name for t in resumed[TRIALS:]] == ["COMPLETE", "COMPLETE"]
    first, second = sweeps(client, experiment_id)
    assert first.info.run_id == parent.info.run_id
    resumed_children = children_by_trial(client, second.info.run_id, experiment_id)
    assert sorted(resumed_children) == [TRIALS, TRIALS + 1]


@pytest.mark.slow
def test_a_run_tracks_straight_into_postgresql_without_a_server(postgres, store, train, tmp_path):
    """tracking.uri may name the database itself (MLflow's SQLAlchemy store); `store` made
    its schema."""
    uri = local_url(postgres, "mlflow")
    train(f"tracking.uri='{uri}'", "experiment_name=straight", "trainer.max_epochs=1")
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("straight").experiment_id])
    assert run.info.status == "FINISHED"
    assert {"test/acc", "val/acc_best"} <= set(run.data.metrics)
    assert client.list_artifacts(run.info.run_id)  # proxied: files reach the server's folder


# --- bad input: one line each, before anything starts ---------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def refusal(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    return line


@pytest.mark.parametrize("command", ["server", "dashboard"])
def test_a_port_taken_is_one_line_naming_it_before_anything_starts(
    command, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("STORAGE", "sqlite:///optuna.db")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refusal([command, "--port", str(port), "--store-dir", str(tmp_path / "s")], capsys)
    assert line == (
        f"error: port {port} on 127.0.0.1 is taken (address already in use); "
        f"choose another: make {command} PORT={port + 1}"
    )
    assert not (tmp_path / "s").exists()  # no PostgreSQL started


def test_a_postgresql_that_does_not_answer_is_one_line_without_its_password(
    tmp_path, monkeypatch, capsys
):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("BACKEND_URI", f"postgresql+psycopg2://bob:hunter2x@127.0.0.1:{port}/ml")
    line = refusal(["server", "--port", str(free_port()), "--store-dir", str(tmp_path)], capsys)
    assert line.startswith(
        f"error: BACKEND_URI=postgresql+psycopg2://<redacted>@127.0.0.1:{port}/ml: "
        "the database does not accept the connection ("
    )
    assert "Connection refused" in line
    assert "hunter2x" not in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///mlflow.db", "BACKEND_URI=sqlite:///mlflow.db is not a PostgreSQL URL; use "),
        (  # SQLAlchemy 2.1 reads postgresql:// as psycopg 3, which is not installed
            "postgresql://bob:hunter2x@db/ml",
            "BACKEND_URI=postgresql://<redacted>@db/ml: its driver is not installed",
        ),
    ],
)
def test_a_backend_uri_that_is_not_postgresql_through_psycopg2_is_one_line(
    url, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("BACKEND_URI", url)
    line = refusal(["server", "--port", str(free_port()), "--store-dir", str(tmp_path)], capsys)
    assert line.startswith(f"error: {message}")


def test_a_postgresql_tracking_uri_that_does_not_answer_is_refused_before_any_run(
    train, runs, tmp_path
):
    uri = f"postgresql+psycopg2://bob:hunter2x@127.0.0.1:{free_port()}/mlflow"
    with pytest.raises(UserError) as error:
        train(f"tracking.uri='{uri}'")
    message = str(error.value)
    assert message.startswith("tracking.uri=postgresql+psycopg2://<redacted>@127.0.0.1:")
    assert "the database does not accept the connection" in message
    assert message.endswith("Start it, or use a local store: tracking.uri=sqlite:///mlflow.db")
    assert "hunter2x" not in message
    assert runs() == []
    assert not (tmp_path / "outputs").exists()


def test_an_optuna_storage_that_does_not_answer_stops_the_sweep_before_any_trial(
    multirun, tmp_path, capsys
):
    storage = f"postgresql+psycopg2://bob:hunter2x@127.0.0.1:{free_port()}/optuna"
    code = multirun(
        "hydra/sweeper=optuna",
        f"hydra.sweeper.storage='{storage}'",
        "optimizer.lr=0.1,0.2",
        "~hydra.callbacks.sweep_tracking",  # the parent run comes before the sweeper's check
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "hydra.sweeper.storage=postgresql+psycopg2://<redacted>@127.0.0.1:" in err
    assert "the database does not accept the connection" in err
    assert "hunter2x" not in err and "Traceback" not in err
    assert not list(tmp_path.glob("sweep/*"))  # no trial ran
