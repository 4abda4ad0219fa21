"""Every run's splits as MLflow dataset inputs, read back from a real sqlite store: three
contexts, a source that says where the images come from, and digests that follow the data
(a change of the train split alone leaves val's and test's digests as they were)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.helpers import write_image_folder
from transferlab.data.module import TransferDataModule
from transferlab.data.transforms import Preprocessing
from transferlab.tracking import unsent
from transferlab.tracking.datasets import dataset_records
from transferlab.tracking.mlflow_run import Tracker, write_unsent

CONTEXTS = ["training", "validation", "test"]


def inputs_of(run) -> dict[str, object]:
    """The run's dataset inputs by context."""
    found = {}
    for dataset_input in run.inputs.dataset_inputs:
        (context,) = [tag.value for tag in dataset_input.tags if tag.key == "mlflow.data.context"]
        found[context] = dataset_input.dataset
    return found


def test_a_run_logs_its_splits_and_their_digests_follow_the_data(train, runs):
    train("dataset.task.train_per_class=2", "freeze=linear_probe")
    train("dataset.task.train_per_class=4", "freeze=linear_probe")

    few, more = (inputs_of(run) for run in runs())
    assert sorted(few) == sorted(more) == sorted(CONTEXTS)
    assert len({dataset.digest for dataset in few.values()}) == 3  # one per split
    assert few["training"].digest != more["training"].digest
    assert few["validation"].digest == more["validation"].digest  # the same images
    assert few["test"].digest == more["test"].digest
    profiles = {context: json.loads(dataset.profile) for context, dataset in few.items()}
    assert profiles["training"] == {"num_examples": 20, "num_classes": 10}
    assert json.loads(more["training"].profile)["num_examples"] == 40
    assert profiles["test"]["num_classes"] == 10 and profiles["test"]["num_examples"] > 500
    digits = few["training"]
    assert digits.name == "digits" and digits.source_type == "code"
    assert json.loads(digits.source) == {
        "tags": {"mlflow.source.name": "transferlab.data.datasets.Digits"}
    }
    tags = [run.data.tags["transferlab.dataset_digest"] for run in runs()]
    assert len(set(tags)) == 2  # the run's digest of its data as a whole, still tagged


def test_an_image_folder_is_a_local_source_and_an_edited_image_is_other_data(train, runs, tmp_path):
    root = write_image_folder(tmp_path / "pets", {"cat": 6, "dog": 6})
    overrides = ("dataset=image_folder", f"dataset.root={root}", "freeze=linear_probe")
    train(*overrides)
    edited = root / "dog" / "3.png"
    before = edited.stat().st_mtime_ns
    Image.fromarray(np.full((12, 12, 3), 200, dtype=np.uint8)).save(edited)
    os.utime(edited, ns=(before + 10**9, before + 10**9))  # a later edit, whatever the clock
    train(*overrides)

    first, second = (inputs_of(run) for run in runs())
    for dataset in first.values():
        assert dataset.name == "pets" and dataset.source_type == "local"
        assert json.loads(dataset.source) == {"uri": str(root)}
    assert sum(json.loads(d.profile)["num_examples"] for d in first.values()) == 12
    for context in CONTEXTS:  # every split is carved from the folder's manifest
        assert first[context].digest != second[context].digest


def target_domain_data(make_config, tmp_path) -> TransferDataModule:
    cfg = make_config(
        "dataset=printed_digits",
        "dataset.per_class=20",
        f"dataset.cache_dir='{tmp_path / 'printed'}'",
        "target_domain=digits",
        "adapt=dann",
    )
    data = TransferDataModule.for_run(cfg, Preprocessing(input_size=None))
    data.setup()
    return data


def test_a_target_domains_splits_are_inputs_of_their_own(
    make_config, client, experiment, tracking_uri, tmp_path
):
    data = target_domain_data(make_config, tmp_path)
    with Tracker(tracking_uri, experiment).start_run("adapt", {}, local_dir=tmp_path) as run:
        run.log_datasets(data)

    found = inputs_of(client.get_run(run.run_id))
    assert sorted(found) == sorted([*CONTEXTS, *(f"target-{c}" for c in CONTEXTS)])
    assert {found[c].name for c in CONTEXTS} == {"printed_digits"}
    assert {found[f"target-{c}"].name for c in CONTEXTS} == {"digits"}
    assert len({dataset.digest for dataset in found.values()}) == 6


def test_the_unsent_path_keeps_and_imports_a_runs_datasets(
    make_config, client, experiment, tracking_uri, tmp_path, capsys
):
    data = target_domain_data(make_config, tmp_path)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    run_id = client.create_run(experiment_id, run_name="kept").info.run_id
    datasets = dataset_records(data)
    records = [{"inputs": datasets}, {"end": "FINISHED"}]
    kept = write_unsent(tmp_path, {"run": run_id, "tracking_uri": tracking_uri}, records)

    assert unsent.main([str(kept), "--tracking-uri", tracking_uri]) == 0

    assert "datasets: 6, final status FINISHED" in capsys.readouterr().out
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    digests = {context: dataset.digest for context, dataset in inputs_of(run).items()}
    assert digests == {dataset["context"]: dataset["digest"] for dataset in datasets}


DATASET = {"name": "digits", "digest": "0123456789abcdef", "source_type": "code",
           "source": "{}", "profile": "{}", "context": "training"}  # fmt: skip


@pytest.mark.parametrize(
    "body",
    [
        [{"name": "digits"}],  # fields missing
        [{**DATASET, "profile": 3}],  # not a string
        DATASET,  # not a list
    ],
)
def test_a_malformed_inputs_record_is_refused_naming_its_line(
    client, tracking_uri, experiment, tmp_path, capsys, body
):
    experiment_id = client.create_experiment(experiment)
    run_id = client.create_run(experiment_id, run_name="kept").info.run_id
    kept = write_unsent(tmp_path, {"run": run_id, "tracking_uri": tracking_uri}, [{"inputs": body}])
    with pytest.raises(SystemExit):
        unsent.main([str(kept), "--tracking-uri", tracking_uri])
    assert f"{kept} line 2: a malformed inputs record" in capsys.readouterr().err
    assert client.get_run(run_id).inputs.dataset_inputs == []
