"""Feature cache: a frozen backbone runs once per key; later trials read its features."""

from __future__ import annotations

import json
import stat
import warnings
from pathlib import Path

import pytest
import torch

from transferlab.data.datasets import Digits
from transferlab.data.feature_cache import (
    FeatureCache,
    extract_features,
    key_digest,
    weights_identity,
)
from transferlab.data.splits import TaskSpec, TaskSplits, carve_task
from transferlab.errors import UserError
from transferlab.models.backbone import Backbone
from transferlab.models.backbones import build_backbone


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    torch.manual_seed(0)
    return build_backbone("small_cnn")


@pytest.fixture(scope="module")
def splits(backbone) -> TaskSplits:
    return carve_task(Digits().load(backbone.preprocessing), TaskSpec(split_seed=0))


@pytest.fixture(scope="module")
def val_features(backbone, splits) -> tuple[torch.Tensor, torch.Tensor]:
    return extract_features(backbone, splits.val.dataset, batch_size=128)


def feature_key(backbone: Backbone, **changes) -> dict:
    """What a caller keys on: everything that decides the features, nothing else."""
    key = {
        "backbone": {"arch": "small_cnn", "input_size": None},
        "weights": weights_identity(backbone),
        "dataset": {"_target_": "transferlab.data.datasets.Digits", "split_seed": 0},
        "split": "val",
        "preprocessing": backbone.preprocessing.as_dict(),
        "precision": "32-true",
    }
    return {**key, **changes}


def test_second_extraction_reads_the_cache(tmp_path, backbone, splits):
    cache = FeatureCache(tmp_path)
    key = feature_key(backbone)

    def compute():
        return extract_features(backbone, splits.val.dataset, batch_size=128)

    first = cache.features(key, compute, splits.val.targets)
    second = cache.features(key, compute, splits.val.targets)
    assert (cache.misses, cache.hits) == (1, 1)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    digest = key_digest(key)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{digest}.json", f"{digest}.pt"]
    assert json.loads((tmp_path / f"{digest}.json").read_text())["key"] == key


def test_a_new_cache_on_the_same_directory_hits(tmp_path, backbone, val_features):
    key = feature_key(backbone)
    FeatureCache(tmp_path).features(key, lambda: val_features, val_features[1])
    again = FeatureCache(tmp_path)
    features, labels = again.features(key, lambda: pytest.fail("again"), val_features[1])
    assert (again.misses, again.hits) == (0, 1)
    assert torch.equal(features, val_features[0]) and torch.equal(labels, val_features[1])


def test_any_change_that_decides_the_features_misses(tmp_path, backbone, val_features):
    before = weights_identity(backbone)
    torch.manual_seed(1)
    after = weights_identity(build_backbone("small_cnn"))
    other_preprocessing = {**backbone.preprocessing.as_dict(), "input_size": 16}
    keys = [
        feature_key(backbone, weights=before),
        feature_key(backbone, weights=after),
        feature_key(backbone, split="test"),
        feature_key(backbone, preprocessing=other_preprocessing),
        feature_key(backbone, precision="bf16-mixed"),
    ]
    cache = FeatureCache(tmp_path / "cache")
    for key in keys:
        cache.features(key, lambda: val_features, val_features[1])
    assert (cache.misses, cache.hits) == (len(keys), 0)


def test_cached_features_equal_a_direct_forward_pass(tmp_path, backbone, splits):
    key = feature_key(backbone)
    dataset = splits.val.dataset
    targets = splits.val.targets
    FeatureCache(tmp_path).features(key, lambda: extract_features(backbone, dataset, 64), targets)
    features, labels = FeatureCache(tmp_path).features(key, lambda: pytest.fail("miss"), targets)
    images, targets = dataset.tensors
    with torch.no_grad():
        expected = backbone.eval()(images)
    assert features.dtype == torch.float32 and labels.dtype == torch.int64
    assert features.shape == (len(dataset), backbone.feature_dim)
    torch.testing.assert_close(features, expected)
    assert torch.equal(labels, targets)


def test_extraction_runs_in_eval_mode_and_restores_each_module_mode(splits):
    backbone = build_backbone("small_cnn").train()
    frozen_bn = backbone.network.features[0][1].eval()  # as a frozen stage's BatchNorm is
    running_mean = frozen_bn.running_mean.clone()
    extract_features(backbone, splits.val.dataset, batch_size=128)
    assert torch.equal(frozen_bn.running_mean, running_mean)  # train mode would update it
    assert backbone.training and not frozen_bn.training
    assert backbone.network.features[1][1].training


def test_bf16_mixed_on_cpu_is_close_and_other_precisions_are_refused(
    backbone, splits, val_features
):
    features, labels = extract_features(backbone, splits.val.dataset, 128, "bf16-mixed")
    assert features.dtype == torch.float32
    torch.testing.assert_close(features, val_features[0], rtol=0.05, atol=0.05)
    assert torch.equal(labels, val_features[1])
    with pytest.raises(UserError, match=r"16-mixed.*not supported on a CPU"):
        extract_features(backbone, splits.val.dataset, 128, "16-mixed")
    with pytest.raises(UserError, match=r"precision='64-true'.*32-true, bf16-mixed or 16-mixed"):
        extract_features(backbone, splits.val.dataset, 128, "64-true")


def test_a_failed_computation_stores_nothing(tmp_path, backbone):
    cache = FeatureCache(tmp_path)

    def fail():
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        cache.features(feature_key(backbone), fail, [0, 1])
    assert list(tmp_path.iterdir()) == []


def damage(path: Path, how: str, rows: int) -> None:
    """What a full disk, a killed writer or another tool can leave in the cache; the
    readable kinds are sized for a split of `rows` images."""
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"not a tensor file at all")
    else:  # a readable entry that does not fit the split
        features, labels = {
            "too_short": (torch.zeros(3, 8), torch.zeros(3, dtype=torch.int64)),
            "flat_features": (torch.zeros(rows), torch.zeros(rows, dtype=torch.int64)),
            "float_labels": (torch.zeros(rows, 8), torch.zeros(rows)),
            "other_labels": (torch.zeros(rows, 8), torch.full((rows,), 3, dtype=torch.int64)),
        }[how]
        torch.save({"features": features, "labels": labels}, path)


@pytest.mark.parametrize(
    "how",
    ["truncated", "empty", "garbage", "too_short", "flat_features", "float_labels", "other_labels"],
)
def test_a_damaged_entry_is_recomputed_with_one_warning(tmp_path, backbone, val_features, how):
    key = feature_key(backbone)
    labels = val_features[1]
    FeatureCache(tmp_path).features(key, lambda: val_features, labels)
    path = tmp_path / f"{key_digest(key)}.pt"
    damage(path, how, len(labels))
    cache = FeatureCache(tmp_path)
    with pytest.warns(UserWarning) as caught:
        features, found = cache.features(key, lambda: val_features, labels)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"feature cache entry {path} ") and "recomputing it" in message
    assert (cache.misses, cache.hits) == (1, 0)
    assert torch.equal(features, val_features[0]) and torch.equal(found, labels)
    again = FeatureCache(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten entry is sound: no second warning
        again.features(key, lambda: pytest.fail("computed again"), labels)
    assert again.hits == 1


def test_a_cache_directory_it_creates_is_private(tmp_path):
    directory = tmp_path / "new" / "features"
    FeatureCache(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_key_digest_ignores_dict_order_and_refuses_values_that_are_not_json():
    assert key_digest({"a": 1, "b": {"c": [1, 2]}}) == key_digest({"b": {"c": [1, 2]}, "a": 1})
    assert key_digest({"a": 1}) != key_digest({"a": 2})
    with pytest.raises(TypeError):
        key_digest({"path": Path("/tmp")})


def test_weights_identity_follows_the_tensors_not_where_they_came_from(tmp_path, backbone):
    path = tmp_path / "elsewhere" / "weights.pt"
    path.parent.mkdir()
    torch.save(backbone.source_state_dict(), path)
    loaded = build_backbone("small_cnn", weights_path=str(path))
    assert weights_identity(loaded.network) == weights_identity(backbone.network)
    with torch.no_grad():
        next(loaded.network.parameters())[0].add_(1e-3)
    assert weights_identity(loaded.network) != weights_identity(backbone.network)
    assert weights_identity(backbone).startswith("sha256:")
