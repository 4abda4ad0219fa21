"""Weights read back from a store are the ones the run recorded (issue 12): a run tags the
sha256 of each weights file it writes; transfer, resume and export refuse a file replaced
in the store since, and source reuse recomputes the key from the run's recorded config
instead of trusting its tag. Real runs, a real sqlite store, its files overwritten as
anyone with write access to a shared store could."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from omegaconf import OmegaConf

from transferlab.errors import UserError
from transferlab.export import export_run
from transferlab.models.backbones import build_backbone
from transferlab.tracking.digests import file_sha256
from transferlab.train import run as run_task

SMALL_TRANSFER = ["compare_scratch=false", "source.trainer.max_epochs=1"]
SOURCE_KEY = "transferlab.source_key"
WEIGHTS_DIGEST = "transferlab.sha256.backbone.pt"
BEST_DIGEST = "transferlab.sha256.checkpoints/best.ckpt"
LAST_DIGEST = "transferlab.sha256.checkpoints/last.ckpt"


def _stored(run, path: str) -> Path:
    """The artifact's file in the run's (local) artifact store."""
    return Path(urlparse(run.info.artifact_uri).path) / path


def _other_weights(original: Path, destination: Path) -> Path:
    """A state dict of the same shapes with other values: what a planted file would hold."""
    state = torch.load(original, weights_only=True)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, destination)
    return destination


def _by_role(runs) -> dict[str, list]:
    found: dict[str, list] = {}
    for r in runs:
        found.setdefault(r.data.tags.get("transferlab.role"), []).append(r)
    return found


def _plant_source(client, experiment_id, source, config: Path, weights: Path, tags: dict) -> str:
    """A FINISHED run in the same experiment, tagged with the real source's key."""
    key = source.data.tags[SOURCE_KEY]
    planted = client.create_run(
        experiment_id, tags={SOURCE_KEY: key, "transferlab.role": "source", **tags}
    ).info.run_id
    client.log_artifact(planted, str(config))
    client.log_artifact(planted, str(weights))
    client.set_terminated(planted, "FINISHED")
    return planted


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, "-m", "transferlab.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # the refusal is checked in a real process
def test_planted_source_runs_are_not_reused_and_replaced_weights_are_refused(
    train, runs, client, experiment, tracking_uri, feature_cache_dir, tmp_path, capsys
):
    train(*SMALL_TRANSFER, config_name="digits_transfer")
    first = _by_role(runs())
    (source,), (transfer,) = first["source"], first["transfer"]
    assert transfer.data.tags["transferlab.source_run_id"] == source.info.run_id
    # what each run wrote, it recorded the digest of
    assert source.data.tags[WEIGHTS_DIGEST] == file_sha256(_stored(source, "backbone.pt"))
    assert transfer.data.tags[BEST_DIGEST] == file_sha256(
        _stored(transfer, "checkpoints/best.ckpt")
    )

    # Planted: the source's own key as a tag and other weights (a) under a config of
    # another key, with a digest of its own weights, (b) under a copy of the source's own
    # config, with no digest. Neither is reused: (a)'s recorded config gives another key,
    # (b) records no digest; the real source is.
    planted_dir = tmp_path / "planted"
    planted_dir.mkdir()
    weights = _other_weights(_stored(source, "backbone.pt"), planted_dir / "backbone.pt")
    config = OmegaConf.load(_stored(source, "config.yaml"))
    config.optimizer.lr = 0.5
    other_config = planted_dir / "other" / "config.yaml"
    other_config.parent.mkdir()
    OmegaConf.save(config, other_config)
    experiment_id = source.info.experiment_id
    digest = {WEIGHTS_DIGEST: file_sha256(weights)}
    other_key = _plant_source(client, experiment_id, source, other_config, weights, digest)
    no_digest = _plant_source(
        client, experiment_id, source, _stored(source, "config.yaml"), weights, {}
    )
    capsys.readouterr()
    train(*SMALL_TRANSFER, config_name="digits_transfer")
    said = capsys.readouterr().err
    assert f"Not reusing source run {other_key}: the config it recorded is another one" in said
    assert f"Not reusing source run {no_digest}: it recorded no sha256 of its backbone.pt" in said
    second = _by_role(runs())
    assert len(second["source"]) == 3  # the real one and the two planted: none trained
    newest = second["transfer"][-1]
    assert newest.info.status == "FINISHED"
    assert newest.data.tags["transferlab.source_run_id"] == source.info.run_id
    assert {other_key, no_digest}.isdisjoint(
        r.data.tags["transferlab.source_run_id"] for r in second["transfer"]
    )

    # The real source's backbone.pt replaced in the store: the transfer, a real process,
    # refuses it before anything is built from it, in one line
    stored = _stored(source, "backbone.pt")
    stored.write_bytes(weights.read_bytes())
    result = _cli(
        tmp_path,
        "-cn",
        "digits_transfer",
        *SMALL_TRANSFER,
        "trainer.max_epochs=2",
        "~callbacks.progress_bar",
        f"tracking.uri='{tracking_uri}'",
        f"experiment_name={experiment}",
        f"feature_cache.dir='{feature_cache_dir}'",
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: backbone.weights_path=runs:/{source.info.run_id}/backbone.pt")
    assert f"backbone.pt of run {source.info.run_id} has sha256 {file_sha256(weights)}" in line
    assert f"not the {source.data.tags[WEIGHTS_DIGEST]} the run recorded" in line
    refused = runs()[-1]
    assert refused.data.tags["transferlab.role"] == "transfer"
    assert refused.info.status == "FAILED"
    assert "test/acc" not in refused.data.metrics  # nothing was trained or tested
    assert not client.list_artifacts(refused.info.run_id, "checkpoints")


def test_export_refuses_a_best_checkpoint_replaced_in_the_store(
    train, runs, tracking_uri, tmp_path
):
    train()
    (run,) = runs()
    best = _stored(run, "checkpoints/best.ckpt")
    recorded = run.data.tags[BEST_DIGEST]
    assert recorded == file_sha256(best)
    checkpoint = torch.load(best, weights_only=True)
    checkpoint["state_dict"] = {k: v * 0 for k, v in checkpoint["state_dict"].items()}
    torch.save(checkpoint, best)
    with pytest.raises(UserError) as refused:
        export_run(run.info.run_id, "onnx", tmp_path / "export", tracking_uri)
    message = str(refused.value)
    assert message == (
        f"export: checkpoints/best.ckpt of run {run.info.run_id} has sha256 {file_sha256(best)}, "
        f"not the {recorded} the run recorded (replaced since the run wrote it): refused"
    )
    assert not (tmp_path / "export").exists()  # nothing built, nothing written


def test_resume_refuses_a_last_checkpoint_replaced_since_the_run_wrote_it(
    make_config, runs, client
):
    overrides = ["~callbacks.progress_bar", "~callbacks.early_stopping", "trainer.max_epochs=2"]
    run_task(make_config(*overrides))
    run_id = runs()[-1].info.run_id
    client.set_terminated(run_id, "FAILED")  # as a run whose process was killed outright ends
    interrupted = client.get_run(run_id)
    last = Path(interrupted.data.tags["transferlab.last_checkpoint"])
    recorded = interrupted.data.tags[LAST_DIGEST]
    assert recorded == file_sha256(last)  # the last.ckpt it wrote (at the second epoch)
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["state_dict"] = {k: v * 0 for k, v in checkpoint["state_dict"].items()}
    torch.save(checkpoint, last)
    with pytest.raises(UserError) as refused:
        run_task(make_config(*overrides, f"resume={run_id}"))
    message = str(refused.value)
    assert message == (
        f"resume={run_id}: checkpoints/last.ckpt of run {run_id} has sha256 {file_sha256(last)}, "
        f"not the {recorded} the run recorded (replaced since the run wrote it): refused; "
        f"pass resume={last} if you trust that file"
    )
    after = client.get_run(run_id)
    assert after.info.status == "FAILED"  # never started again
    assert after.data.metrics == interrupted.data.metrics


def test_weights_of_a_transferlab_run_without_a_digest_are_refused(
    client, experiment, tmp_path, tracking_uri, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    experiment_id = client.create_experiment(experiment, artifact_location=str(tmp_path / "a"))
    weights = tmp_path / "backbone.pt"
    torch.save(build_backbone("small_cnn").source_state_dict(torch.nn.Linear(64, 3)), weights)
    uris = {}
    for role in ("source", None):  # a transferlab run, and a user's own MLflow run
        tags = {"transferlab.role": role} if role else {}
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
        client.log_artifact(run_id, str(weights))
        client.set_terminated(run_id)
        uris[role] = f"runs:/{run_id}/backbone.pt"
    with pytest.raises(UserError) as refused:
        build_backbone("small_cnn", weights_path=uris["source"])
    run_id = uris["source"].split("/")[1]
    assert str(refused.value).startswith(
        f"backbone.weights_path={uris['source']}: run {run_id} recorded no sha256 of its "
        f"backbone.pt (found {file_sha256(weights)})"
    )
    assert build_backbone("small_cnn", weights_path=uris[None]).source_head.out_features == 3
