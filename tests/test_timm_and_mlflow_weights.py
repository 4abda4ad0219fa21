"""timm backbones (stages from feature info, preprocessing from pretrained_cfg) and weights
read from MLflow runs and registered models."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from transferlab.data.transforms import Preprocessing
from transferlab.errors import UserError
from transferlab.models.backbones import build_backbone
from transferlab.models.timm_backbone import build_timm_backbone

TIMM_MODELS = ["resnet18", "efficientnet_b0", "vit_tiny_patch16_224", "convnext_atto"]


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_models_split_into_stages_that_cover_them(name):
    backbone = build_timm_backbone(name)  # Backbone() refuses stages that miss or repeat one
    assert backbone.num_stages >= 4
    staged = sum(len(backbone.stage_parameters(i)) for i in range(backbone.num_stages))
    assert staged == len(list(backbone.network.parameters()))
    assert any(isinstance(m, nn.LayerNorm | nn.BatchNorm2d) for m in backbone.stage_modules(0))
    size = backbone.preprocessing.input_size
    with torch.no_grad():
        features = backbone.eval()(torch.zeros(2, 3, size, size))
    assert features.shape == (2, backbone.feature_dim)


def test_stages_follow_the_feature_modules():
    assert build_timm_backbone("resnet18").stages == [
        ["conv1", "bn1"],
        ["layer1"],
        ["layer2"],
        ["layer3"],
        ["layer4"],
    ]
    # blocks 3 and 5 are no feature level: each joins the level its output feeds
    convnext = build_timm_backbone("convnext_atto")
    assert convnext.classifier == "head.fc"
    assert convnext.stages == [
        ["stem", "stages.0"],
        ["stages.1"],
        ["stages.2"],
        ["stages.3", "head"],
    ]
    efficientnet = build_timm_backbone("efficientnet_b0").stages
    assert efficientnet[3] == ["blocks.3", "blocks.4"]
    assert efficientnet[-1] == ["blocks.5", "blocks.6", "conv_head", "bn2"]


def test_preprocessing_comes_from_the_pretrained_cfg():
    vit = build_timm_backbone("vit_tiny_patch16_224").preprocessing  # crop_pct 0.9
    assert vit == Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=224, resize_size=248)
    resnet = build_timm_backbone("resnet18", input_size=64).preprocessing  # crop_pct 0.95
    assert (resnet.mean, resnet.input_size, resnet.resize_size) == ((0.485, 0.456, 0.406), 64, 67)
    with pytest.raises(UserError, match="vit_tiny_patch16_224 only takes 224 px inputs"):
        build_timm_backbone("vit_tiny_patch16_224", input_size=64)


def test_unknown_timm_model():
    with pytest.raises(UserError, match=r"backbone.name='resnet19' is not a timm model"):
        build_timm_backbone("resnet19")


def test_pretrained_offline_fails_fast_with_the_way_out(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these at import (timm imported it): the cache too, kept empty
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError) as error:
        build_timm_backbone("resnet18", pretrained=True)
    message = str(error.value)
    assert "\n" not in message
    assert "pretrained weights for resnet18" in message
    assert "backbone.weights_path=FILE" in message


def test_weights_path_loads_a_timm_state_dict(tmp_path):
    source = timm.create_model("convnext_atto", num_classes=7)
    path = tmp_path / "convnext.pth"
    torch.save(source.state_dict(), path)
    backbone = build_timm_backbone("convnext_atto", pretrained=True, weights_path=str(path))
    assert torch.equal(backbone.network.stem[0].weight, source.stem[0].weight)
    assert torch.equal(backbone.network.head.norm.weight, source.head.norm.weight)
    assert torch.equal(backbone.source_head.weight, source.head.fc.weight)  # its 7 classes


@pytest.fixture
def run_id(client, experiment, tmp_path) -> str:
    """A finished run that logged `backbone.pt` as transferlab runs do (a small_cnn's)."""
    experiment_id = client.create_experiment(
        experiment, artifact_location=(tmp_path / "artifacts").as_uri()
    )
    run_id = client.create_run(experiment_id).info.run_id
    weights = tmp_path / "backbone.pt"
    torch.save(build_backbone("small_cnn").source_state_dict(nn.Linear(64, 3)), weights)
    client.log_artifact(run_id, str(weights))
    client.set_terminated(run_id)
    return run_id


@pytest.fixture
def mlflow_store(tracking_uri, monkeypatch) -> str:
    """The shared sqlite store as MLflow's current one: where weights URIs are resolved."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    return tracking_uri


def test_weights_from_a_run(mlflow_store, run_id, tmp_path):
    logged = torch.load(tmp_path / "backbone.pt", weights_only=True)
    backbone = build_backbone("small_cnn", weights_path=f"runs:/{run_id}/backbone.pt")
    assert torch.equal(backbone.source_head.weight, logged["classifier.weight"])
    # the run's whole artifact folder: its one weights file
    again = build_backbone("small_cnn", weights_path=f"runs:/{run_id}/")
    assert torch.equal(again.source_head.weight, logged["classifier.weight"])


def test_weights_from_a_registered_model(mlflow_store, client, run_id, experiment):
    client.create_registered_model(experiment)
    version = client.create_model_version(
        experiment, source=f"runs:/{run_id}/backbone.pt", run_id=run_id
    ).version
    client.set_registered_model_alias(experiment, "champion", version)
    by_version = build_backbone("small_cnn", weights_path=f"models:/{experiment}/{version}")
    by_alias = build_backbone("small_cnn", weights_path=f"models:/{experiment}@champion")
    assert by_version.source_head.out_features == 3
    assert torch.equal(by_version.source_head.weight, by_alias.source_head.weight)


def test_timm_weights_from_a_run(mlflow_store, client, run_id, tmp_path):
    source = build_timm_backbone("resnet18")
    path = tmp_path / "timm.pt"
    torch.save(source.source_state_dict(nn.Linear(source.feature_dim, 5)), path)
    client.log_artifact(run_id, str(path), "timm")
    backbone = build_timm_backbone("resnet18", weights_path=f"runs:/{run_id}/timm/timm.pt")
    assert torch.equal(
        backbone.network.layer4[1].conv2.weight, source.network.layer4[1].conv2.weight
    )
    assert backbone.source_head.out_features == 5


@pytest.mark.parametrize(
    ("uri", "error"),
    [
        ("runs:/0123456789abcdef/backbone.pt", "Run with id=0123456789abcdef not found"),
        ("runs:/{run_id}/missing.pt", "Failed to download artifacts from path 'missing.pt'"),
        ("models:/no_such_model/1", "Registered Model with name=no_such_model not found"),
    ],
)
def test_uri_that_cannot_be_resolved(mlflow_store, run_id, uri, error):
    uri = uri.format(run_id=run_id)
    with pytest.raises(UserError) as raised:
        build_backbone("small_cnn", weights_path=uri)
    message = str(raised.value)
    assert message.startswith(f"backbone.weights_path={uri} could not be resolved: {error}")
    assert "\n" not in message


def test_uri_of_a_folder_with_several_weights_files(mlflow_store, client, run_id, tmp_path):
    for name in ("a.pt", "b.pth"):
        torch.save({}, tmp_path / name)
        client.log_artifact(run_id, str(tmp_path / name), "several")
    with pytest.raises(UserError, match=r"is a folder with 2 .pt/.pth files \['a.pt', 'b.pth'\]"):
        build_backbone("small_cnn", weights_path=f"runs:/{run_id}/several")
