"""A recorded config is data from a store that others may write to: rerun, resume and export
build only the components that a config group defines, at the node where the group puts
them, evaluate no resolver of a recorded config, and refuse anything else in one line,
before anything is built and before any run is started."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.helpers import replace_artifact
from transferlab.errors import UserError
from transferlab.export import export_run
from transferlab.rerun import rerun
from transferlab.tracking.recorded import EXPERIMENT_CONFIG, STAGE_CONFIG
from transferlab.train import run as run_task

NOT_DEFINED = "is not a component any config group defines; not building it"


class Payload:
    """Unpickled, writes `marker`: what a planted weights file may hold."""

    def __init__(self, marker: Path):
        self.code = f"open({str(marker)!r}, 'w').write('ran')"

    def __reduce__(self):
        return exec, (self.code,)


@pytest.fixture
def payload(tmp_path) -> tuple[dict, Path]:
    """A node that runs a pickle payload when Hydra builds it (torch.load is not on Hydra's
    blocklist), and the marker file the payload writes."""
    marker = tmp_path / "payload-ran"
    weights = tmp_path / "planted-weights.pt"
    torch.save(Payload(marker), weights)
    return {"_target_": "torch.load", "f": str(weights), "weights_only": False}, marker


def test_the_payload_runs_when_built(payload):
    """Guards the tests below: the marker's absence means the payload was never built."""
    node, marker = payload
    instantiate(node)
    assert marker.read_text() == "ran"


def inside_backbone(node: dict) -> Callable[[dict], None]:
    return lambda tree: tree["backbone"].update(init=node)


def plant_run(client, experiment: str, config: dict, folder: Path) -> str:
    """A finished run that holds only `config` as its config.yaml: a planted run."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    run_id = client.create_run(experiment_id).info.run_id
    folder.mkdir()
    (folder / STAGE_CONFIG).write_text(yaml.safe_dump(config))
    client.log_artifact(run_id, str(folder / STAGE_CONFIG))
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture
def valid_config(make_config) -> dict:
    """A config as a run records it, to plant with one change."""
    return OmegaConf.to_container(make_config(), resolve=True)


def export_refusal(run_id: str, tracking_uri: str, out: Path) -> str:
    with pytest.raises(UserError) as refused:
        export_run(run_id, "onnx", out, tracking_uri)
    assert not out.exists()
    return str(refused.value)


@pytest.mark.slow
def test_a_planted_nested_target_is_refused_by_rerun_export_and_resume(
    payload, train, make_config, runs, client, tracking_uri, tmp_path
):
    node, marker = payload
    train()
    (run,) = runs()
    run_id = run.info.run_id
    for name in (EXPERIMENT_CONFIG, STAGE_CONFIG):  # inside the backbone's node
        replace_artifact(client, run_id, name, inside_backbone(node), tmp_path / name)
    refusal = f"backbone.init._target_=torch.load {NOT_DEFINED}"

    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [sys.executable, "-m", "transferlab.rerun", run_id, "--tracking-uri", tracking_uri]
    cli = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300
    )
    assert cli.returncode == 1
    assert "Traceback" not in cli.stderr
    assert cli.stderr.strip().splitlines()[-1] == f"error: {refusal}"

    assert export_refusal(run_id, tracking_uri, tmp_path / "export") == refusal

    client.set_terminated(run_id, "KILLED")  # as an interrupted run, which resume continues
    with pytest.raises(UserError) as resumed:
        run_task(make_config(f"resume={run_id}"))
    assert str(resumed.value) == refusal

    assert not marker.exists()
    assert [(r.info.run_id, r.info.status) for r in runs()] == [(run_id, "KILLED")]


def test_a_planted_component_that_no_group_defines_is_refused(
    payload, valid_config, client, experiment, tracking_uri, tmp_path
):
    valid_config["backbone"], marker = payload
    run_id = plant_run(client, experiment, valid_config, tmp_path / "planted")
    refusal = export_refusal(run_id, tracking_uri, tmp_path / "export")
    assert refusal == f"backbone._target_=torch.load {NOT_DEFINED}"
    assert not marker.exists()


def test_a_groups_component_at_a_node_no_group_puts_it_is_refused(
    valid_config, client, experiment, tracking_uri, tmp_path
):
    """A reference to its own keys is resolved before the check: `${head}` copies the head's
    node, whose target is allowed, but not inside the backbone."""
    valid_config["backbone"]["init"] = "${head}"
    run_id = plant_run(client, experiment, valid_config, tmp_path / "planted")
    refusal = export_refusal(run_id, tracking_uri, tmp_path / "export")
    assert refusal == f"backbone.init._target_=transferlab.models.heads.LinearHead {NOT_DEFINED}"


@pytest.fixture
def marking_resolver(tmp_path):
    """A resolver of the reader's that leaves a marker when it is evaluated."""
    marker = tmp_path / "resolver-ran"
    OmegaConf.register_new_resolver("tl_mark", lambda: marker.write_text("ran") and "x")
    yield marker
    OmegaConf.clear_resolver("tl_mark")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("experiment_name", "${oc.env:TL_READERS_SECRET}"),  # the reader's, into the store
        ("dataset.root", "${oc.env:HOME}/digits"),
        ("backbone.init", "${oc.create:{_target_: os.system, command: id}}"),
        ("optimizer.lr", "${tl_mark:}"),
        ("optimizer.lr", "\\${tl_mark:}"),  # escaped: live again once the value is copied
    ],
)
def test_a_recorded_resolver_is_refused_unevaluated(
    key, value, valid_config, marking_resolver, client, experiment, tracking_uri, tmp_path
):
    *parents, name = key.split(".")
    node = valid_config
    for parent in parents:
        node = node[parent]
    node[name] = value
    run_id = plant_run(client, experiment, valid_config, tmp_path / "planted")
    refusal = export_refusal(run_id, tracking_uri, tmp_path / "export")
    assert refusal.startswith(f"{key}={value} is not evaluated: a recorded config may only ")
    assert not marking_resolver.exists()


class TokenDigits:
    """A user's own dataset behind a token: the digits, once it has been given one."""

    given: str | None = None  # the token the last instance was given

    def __init__(self, token: str | None = None):
        TokenDigits.given = token

    def load(self, preprocessing):
        from transferlab.data.datasets import Digits

        return Digits().load(preprocessing)


USER_DATASET = f"""\
defaults:
  - /base_dataset@_here_
  - _self_

_target_: {__name__}.TokenDigits
token: null
"""


def test_a_users_own_component_is_rerun_from_their_search_path_with_their_secret(
    make_config, runs, tracking_uri, tmp_path, monkeypatch
):
    """The user's search path defines their component; a secret recorded as
    `${oc.env:VAR}` is read from the environment of the process that reruns it."""
    folder = tmp_path / "my_conf"
    (folder / "dataset").mkdir(parents=True)
    (folder / "dataset" / "token_digits.yaml").write_text(USER_DATASET)
    searchpath = f"file://{folder}"
    monkeypatch.setenv("TL_TEST_TOKEN", "the-first-one")
    overrides = [f"hydra.searchpath=[{searchpath}]", "dataset=token_digits"]
    run_task(make_config("~callbacks.progress_bar", "trainer.max_epochs=1", *overrides,
                         "dataset.token=${oc.env:TL_TEST_TOKEN}"))  # fmt: skip
    (run,) = runs()
    assert TokenDigits.given == "the-first-one"
    make_config()  # this process's Hydra app no longer names the user's folder

    with pytest.raises(UserError) as refused:
        rerun(run.info.run_id, tracking_uri, str(tmp_path / "refused"))
    assert str(refused.value) == f"dataset._target_={__name__}.TokenDigits {NOT_DEFINED}"

    monkeypatch.setenv("TL_TEST_TOKEN", "the-readers-own")
    assert rerun(run.info.run_id, tracking_uri, str(tmp_path / "rerun"), (searchpath,))
    assert TokenDigits.given == "the-readers-own"
    assert [r.info.status for r in runs()] == ["FINISHED", "FINISHED"]
