"""Backbones: stages, weights from local files, clear errors for weights that do not fit."""

from __future__ import annotations

import pickle

import pytest
import torch
import torchvision
from torch import nn

from transferlab.errors import UserError
from transferlab.models.backbone import Backbone
from transferlab.models.backbones import ARCHITECTURES, build_backbone


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_splits_into_stages_that_cover_it(arch):
    backbone = build_backbone(arch)  # Backbone() refuses stages that miss or repeat a parameter
    assert backbone.num_stages >= 3
    staged = sum(len(backbone.stage_parameters(i)) for i in range(backbone.num_stages))
    assert staged == len(list(backbone.network.parameters()))
    size = backbone.preprocessing.input_size or 8
    with torch.no_grad():
        features = backbone.eval()(torch.zeros(1, 3, size, size))
    assert features.shape == (1, backbone.feature_dim)


def test_weights_path_loads_a_torchvision_state_dict(tmp_path):
    source = torchvision.models.resnet18(weights=None, num_classes=7)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    backbone = build_backbone("resnet18", weights_path=str(path))
    assert torch.equal(backbone.network.conv1.weight, source.conv1.weight)
    assert torch.equal(
        backbone.network.layer4[1].bn2.running_mean, source.layer4[1].bn2.running_mean
    )
    # the source classifier (7 classes here) is kept, frozen, as the source head
    assert torch.equal(backbone.source_head.weight, source.fc.weight)
    assert not backbone.source_head.weight.requires_grad


def test_source_state_dict_round_trips_with_a_new_head(tmp_path):
    backbone = build_backbone("small_cnn")
    head = nn.Linear(backbone.feature_dim, 3)
    path = tmp_path / "backbone.pt"
    torch.save(backbone.source_state_dict(head), path)
    again = build_backbone("small_cnn", weights_path=str(path))
    assert torch.equal(again.source_head.weight, head.weight)
    for a, b in zip(again.state_dict().values(), backbone.state_dict().values(), strict=False):
        if a.shape == b.shape:
            assert torch.equal(a, b)


def test_weights_path_that_does_not_exist(tmp_path):
    with pytest.raises(UserError, match=r"backbone.weights_path=.*missing.pth does not exist"):
        build_backbone("resnet18", weights_path=str(tmp_path / "missing.pth"))


def test_weights_path_for_another_architecture(tmp_path):
    path = tmp_path / "vgg.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), path)
    with pytest.raises(UserError, match=r"does not fit resnet18: missing keys \['conv1.weight'"):
        build_backbone("resnet18", weights_path=str(path))


def test_weights_path_with_wrong_shapes(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["conv1.weight"] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(UserError, match=r"does not fit resnet18: size mismatch for conv1.weight"):
        build_backbone("resnet18", weights_path=str(path))


class _Payload:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('ran')",))


def test_pickled_payload_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv1.weight": _Payload()}))
    with pytest.raises(UserError, match="needs pickle"):
        build_backbone("resnet18", weights_path=str(path))
    assert not (tmp_path / "PWNED").exists()


def test_unknown_weights_name_lists_the_real_ones():
    with pytest.raises(
        UserError,
        match=r"weights='IMAGENET9K' does not exist for resnet50; "
        r"use IMAGENET1K_V1, IMAGENET1K_V2 or DEFAULT",
    ):
        build_backbone("resnet50", weights="IMAGENET9K")


def test_offline_download_says_where_the_file_goes(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(UserError) as error:
        build_backbone("resnet18", weights="IMAGENET1K_V1")
    message = str(error.value)
    assert str(expected) in message
    assert "backbone.weights_path=" in message


def test_small_cnn_has_no_published_weights():
    with pytest.raises(UserError, match="small_cnn has no published weights"):
        build_backbone("small_cnn", weights="DEFAULT")


def test_preprocessing_follows_the_weights_metadata_and_input_size_override(tmp_path):
    from transferlab.models.backbones import preprocessing_from_weights
    from transferlab.models.input_size import resized

    weights = torchvision.models.get_model_weights("resnet18").IMAGENET1K_V1
    pre = preprocessing_from_weights(weights)
    assert (pre.input_size, pre.resize_size, pre.mean) == (224, 256, (0.485, 0.456, 0.406))
    small = resized(pre, 64, "resnet18", fixed=False)
    assert (small.input_size, small.resize_size) == (64, 73)
    with pytest.raises(UserError, match="vit_b_16 only takes 224 px inputs"):
        build_backbone("vit_b_16", input_size=64)


def test_a_user_backbone_is_just_a_backbone():
    network = nn.Sequential()
    network.add_module(
        "body", nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    )
    network.add_module("fc", nn.Linear(4, 2))
    from transferlab.data.transforms import Preprocessing

    backbone = Backbone(network, "fc", [["body.0"]], Preprocessing(input_size=None), "mine")
    assert backbone.feature_dim == 4
    with pytest.raises(UserError, match="every parameter must be in exactly one stage"):
        Backbone(
            nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2)),
            "2",
            [],
            Preprocessing(),
        )
