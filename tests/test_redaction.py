"""Secrets are never logged: literal ones are redacted, values read from the environment
are recorded as their `${oc.env:...}` expression; a run with a redacted secret is not rerun."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from mlflow.artifacts import download_artifacts
from omegaconf import OmegaConf

from tests.conftest import FAST
from transferlab.errors import UserError
from transferlab.rerun import rerun
from transferlab.scrub import scrubbed
from transferlab.tracking.redaction import (
    REDACTED,
    is_secret,
    redact_hydra_files,
    redacted,
    redacted_keys,
    redacted_override,
)
from transferlab.tracking.sweep import PARENT_RUN_ENV

LITERAL, FROM_ENV = "s3cr3t-literal", "env-s3cr3t"
SECRETS = (
    "dataset._target_=tests.test_redaction.PrivateDigits",
    "+dataset.api_key=" + LITERAL,
    "+dataset.token=${oc.env:TL_TEST_TOKEN}",
)


class PrivateDigits:
    """A user's dataset behind credentials: the digits, once it has been given them."""

    given: dict[str, str] = {}  # noqa: RUF012 - what the last instance was given

    def __init__(self, api_key: str, token: str):
        PrivateDigits.given = {"api_key": api_key, "token": token}

    def load(self, preprocessing):
        from transferlab.data.datasets import Digits

        return Digits().load(preprocessing)


@pytest.mark.parametrize(
    "key",
    ["hf_token", "db_password", "DB_PASSWD", "apiKey", "aws-access-key", "ssh.private_key",
     "credentials.user", "+dataset.secret", "hydra.job.env_set.HF_TOKEN", "dataset.AUTH",
     "http.Bearer", "web.session_id", "web.COOKIE", "db.pass", "db.pwd", "ssh.key",
     "+dataset.extra.token", "hydra/launcher.api_key"],
)  # fmt: skip
def test_keys_that_look_like_secrets_are_secrets(key):
    assert is_secret(key)


@pytest.mark.parametrize(
    "key",
    ["optimizer.lr", "dataset.root", "backbone.weights", "seed", "scheduler.monitor_key",
     "keys.path", "hydra.job.config.override_dirname.exclude_keys"],
)  # fmt: skip
def test_ordinary_keys_are_not(key):
    assert not is_secret(key)


@pytest.mark.parametrize(
    ("override", "recorded"),
    [
        ("+dataset.token=abc", f"+dataset.token={REDACTED}"),
        ("+dataset.token=${oc.env:HF_TOKEN}", "+dataset.token=${oc.env:HF_TOKEN}"),
        ("dataset.token=$\\{oc.env\\:HF_TOKEN\\}", "dataset.token=$\\{oc.env\\:HF_TOKEN\\}"),
        ("dataset.token=${oc.env:HF_TOKEN,abc}", f"dataset.token={REDACTED}"),  # a literal default
        ("dataset.token=a,b", f"dataset.token={REDACTED}"),
        ("optimizer.lr=1e-3,3e-3", "optimizer.lr=1e-3,3e-3"),
        ("~dataset.token", "~dataset.token"),
        ("-m", "-m"),
        (
            "+dataset.extra={token:Zq7Abcd,n:[1,{Pwd:x}]}",
            f"+dataset.extra={{token:{REDACTED},n:[1,{{Pwd:{REDACTED}}}]}}",
        ),
        (
            "+d.e=choice({token:a},{token:b})",
            f"+d.e=choice({{token:{REDACTED}}},{{token:{REDACTED}}})",
        ),
        ("tracking.uri=https://me:pw@host:5000", "tracking.uri=https://<redacted>@host:5000"),
        (
            "hydra.sweeper.storage=postgresql://u:pw@db/optuna",
            "hydra.sweeper.storage=postgresql://<redacted>@db/optuna",
        ),
        # as Hydra escapes a sweep job's overrides
        ("+x.url=https\\://u\\:pw@h/p", "+x.url=https\\://<redacted>@h/p"),
        ("+dataset.KEY=Zq7Key", f"+dataset.KEY={REDACTED}"),
    ],
)
def test_an_override_with_a_secret_is_recorded_without_its_value(override, recorded):
    assert redacted_override(override) == recorded


def test_free_text_loses_url_credentials_and_every_secret_redacted_before():
    redacted_override("+dataset.extra={bearer:Zq7TextLeak}")  # now known by value
    text = scrubbed("ConnectionError: https://u:pw@host refused Zq7TextLeak (as me)")
    assert text == f"ConnectionError: https://{REDACTED}@host refused {REDACTED} (as me)"


def test_a_sweep_config_and_hydra_files_are_saved_redacted_and_private(tmp_path):
    hydra = {
        "sweeper": {"storage": "postgresql://u:Zq7DbLeak@db/optuna"},
        "job": {"override_dirname": "+dataset.token=Zq7Leak"},
        "overrides": {"task": ["+dataset.token=Zq7Leak"], "hydra": []},
    }
    folder = tmp_path / ".hydra"
    folder.mkdir()
    OmegaConf.save(OmegaConf.create({"hydra": hydra}), folder / "hydra.yaml")
    OmegaConf.save(OmegaConf.create({"db": {"password": "Zq7Leak"}}), folder / "config.yaml")
    OmegaConf.save(OmegaConf.create(hydra["overrides"]["task"]), folder / "overrides.yaml")
    redact_hydra_files(folder)
    saved = OmegaConf.load(folder / "hydra.yaml").hydra
    assert saved.sweeper.storage == f"postgresql://{REDACTED}@db/optuna"
    assert saved.job.override_dirname == REDACTED
    assert list(saved.overrides.task) == [f"+dataset.token={REDACTED}"]
    assert OmegaConf.load(folder / "config.yaml").db.password == REDACTED
    for path in folder.iterdir():
        assert "Zq7" not in path.read_text() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


@pytest.fixture
def environment(monkeypatch):
    monkeypatch.setenv("TL_TEST_TOKEN", FROM_ENV)
    monkeypatch.setenv("TL_TEST_ROOT", "/data")


def test_a_config_is_recorded_with_env_expressions_and_without_literal_secrets(environment):
    original = OmegaConf.create({
        "dataset": {"root": "${oc.env:TL_TEST_ROOT}/digits", "api_key": LITERAL, "name": "d"},
        "tracking": {"token": "${oc.env:TL_TEST_TOKEN}", "use_auth_token": True},
        "credentials": {"user": "me", "key_file": None},
    })  # fmt: skip
    resolved = OmegaConf.create(OmegaConf.to_container(original, resolve=True))
    recorded = redacted(resolved, original)
    assert OmegaConf.to_container(recorded) == {
        "dataset": {"root": "${oc.env:TL_TEST_ROOT}/digits", "api_key": REDACTED, "name": "d"},
        "tracking": {"token": "${oc.env:TL_TEST_TOKEN}", "use_auth_token": True},
        "credentials": {"user": REDACTED, "key_file": None},
    }
    assert redacted_keys(recorded) == ["dataset.api_key", "credentials.user"]
    assert resolved.dataset.api_key == LITERAL  # the run itself keeps the real values


def test_a_stage_config_derived_from_the_experiment_is_redacted_too(environment):
    """The source stage merges `source.*` onto the config: the value read from the
    environment moves, and is still recorded as its expression."""
    from_env = {"root": "${oc.env:TL_TEST_ROOT}", "token": "${oc.env:TL_TEST_TOKEN}"}
    original = OmegaConf.create({"dataset": {"root": "/target"}, "source": {"dataset": from_env}})
    resolved = OmegaConf.create(OmegaConf.to_container(original, resolve=True))
    experiment = redacted(resolved, original)
    assert OmegaConf.to_container(experiment, resolve=True) == OmegaConf.to_container(resolved)
    stage = OmegaConf.merge(resolved, resolved.source)
    recorded = OmegaConf.to_container(redacted(stage, experiment))
    assert recorded["dataset"] == from_env


def recorded_text(run, tracking_uri: str, folder: Path) -> str:
    """All that a run records as text: its param and tag values, its yaml and md files."""
    folder = folder / run.info.run_id
    download_artifacts(run_id=run.info.run_id, dst_path=str(folder), tracking_uri=tracking_uri)
    texts = [path.read_text() for path in folder.rglob("*") if path.suffix in (".yaml", ".md")]
    assert texts, f"run {run.info.run_name} recorded no config"
    return "\n".join([*run.data.params.values(), *run.data.tags.values(), *texts])


def test_a_run_records_no_secret_and_is_not_rerun_without_it(
    train, runs, tracking_uri, tmp_path, monkeypatch, environment
):
    monkeypatch.setattr(sys, "argv", ["transferlab-train", *SECRETS])  # the `command` tag
    train(*SECRETS)
    assert PrivateDigits.given == {"api_key": LITERAL, "token": FROM_ENV}  # used, not recorded
    (run,) = runs()
    text = recorded_text(run, tracking_uri, tmp_path / "recorded")
    assert LITERAL not in text and FROM_ENV not in text
    assert run.data.params["dataset.api_key"] == REDACTED
    assert run.data.params["dataset.token"] == "${oc.env:TL_TEST_TOKEN}"
    assert SECRETS[2] in run.data.tags["command"]
    overrides = OmegaConf.load(tmp_path / "recorded" / run.info.run_id / "overrides.yaml")
    assert OmegaConf.to_container(overrides)[-3:] == [
        SECRETS[0],
        f"+dataset.api_key={REDACTED}",
        SECRETS[2],
    ]
    with pytest.raises(UserError, match=r"dataset\.api_key.*oc\.env:DATASET_API_KEY"):
        rerun(run.info.run_id, tracking_uri)


def test_a_multirun_records_no_secret_in_its_parent_or_jobs(
    runs, client, experiment, tracking_uri, tmp_path, monkeypatch, environment
):
    from transferlab.train import main

    client.create_experiment(experiment, artifact_location=str(tmp_path / "artifacts"))
    monkeypatch.chdir(tmp_path)  # the sweep's folder
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    args = [f"tracking.uri='{tracking_uri}'", f"experiment_name={experiment}", *FAST, *SECRETS]
    monkeypatch.setattr(sys, "argv", ["transferlab-train", "-m", *args])
    GlobalHydra.instance().clear()
    try:
        main()
    finally:
        GlobalHydra.instance().clear()
    parent, job = sorted(runs(), key=lambda r: r.data.tags["transferlab.role"] != "sweep")
    assert job.data.tags["mlflow.parentRunId"] == parent.info.run_id
    for run in (parent, job):
        text = recorded_text(run, tracking_uri, tmp_path / "recorded")
        assert LITERAL not in text and FROM_ENV not in text
    assert parent.data.params["sweep.dataset.api_key"] == REDACTED
    assert parent.data.params["sweep.dataset.token"] == "${oc.env:TL_TEST_TOKEN}"
    overrides = job.data.tags["transferlab.overrides"]  # as Hydra gives a job its overrides
    assert f"+dataset.api_key={REDACTED}" in overrides and "oc.env" in overrides
