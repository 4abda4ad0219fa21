"""Every run with a neural head is an MLflow model: logged, linked to its run and its test
metrics, registered, served, loaded in a fresh process, and a registered model's backbone
starts a new run."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import torch
from mlflow.entities import LoggedModelStatus
from PIL import Image
from sklearn.datasets import load_digits

from transferlab.builders import build_backbone_and_data
from transferlab.errors import UserError
from transferlab.export import CHECKPOINT, rebuild
from transferlab.models.weights_file import local_weights_file
from transferlab.register import main as register_main
from transferlab.safe_load import load_tensors
from transferlab.tracking.digests import digest_tag
from transferlab.tracking.logged_model import BACKBONE_ARTIFACT, BACKBONE_FILE

PEFT = ("backbone=vit_tiny_p4", "trainer.max_epochs=1", "dataset.task.train_per_class=20")


def _digit_images(size: int = 8) -> np.ndarray:
    """Two of the digits as raw uint8 H x W x 3 images (grey in three channels), enlarged
    by repeating pixels to `size`: what a user hands the model."""
    grey = np.round(load_digits().images[[3, 7]] / 16 * 255).astype(np.uint8)
    grey = grey.repeat(size // 8, axis=1).repeat(size // 8, axis=2)
    return np.repeat(grey[..., None], 3, axis=3)


def _expected(cfg, client, run, images: np.ndarray, folder: Path) -> np.ndarray:
    """The run's probabilities as transferlab itself computes them: its network rebuilt
    from its config and best checkpoint (export.rebuild), on the images preprocessed as the
    run's data were (the backbone's own tensor transform)."""
    local = client.download_artifacts(run.info.run_id, CHECKPOINT, str(folder))
    model, _ = rebuild(cfg, load_tensors(local, CHECKPOINT), run)
    backbone, _ = build_backbone_and_data(cfg)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        logits = model(backbone.preprocessing.tensor_transform(pixels))
    return torch.softmax(logits, dim=1).numpy()


def _probabilities(predictions, class_names: list[str]) -> np.ndarray:
    """The model's answer (a DataFrame, or the server's records) as an array."""
    if hasattr(predictions, "columns"):
        rows = list(predictions["probabilities"])
    else:
        rows = [record["probabilities"] for record in predictions]
    return np.array([[row[name] for name in class_names] for row in rows])


def _logged_model(client, experiment: str, run_id: str):
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    found = client.search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    assert len(found) == 1, found
    return found[0]


def _backbone_of(model, folder: Path) -> dict[str, torch.Tensor]:
    uri = f"{model.artifact_location}/{BACKBONE_ARTIFACT}"
    local = mlflow.artifacts.download_artifacts(uri, dst_path=str(folder))
    return load_tensors(local, BACKBONE_ARTIFACT)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_run_is_an_mlflow_model_that_predicts_as_the_run(
    train, runs, client, experiment, make_config, tmp_path
):
    train()
    (run,) = runs()
    model = _logged_model(client, experiment, run.info.run_id)
    # the run's Models column: the run names it as its output
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    assert model.name == "model" and model.status == LoggedModelStatus.READY
    # its test metrics are linked to it, with the run's values
    linked = {m.key: m.value for m in model.metrics}
    assert linked["test/acc"] == pytest.approx(run.data.metrics["test/acc"])
    assert all(key.startswith("test/") for key in linked)
    info = mlflow.models.get_model_info(f"models:/{model.model_id}")
    assert info.signature.inputs.input_names() == ["image"]
    assert info.signature.outputs.input_names() == ["class", "probabilities"]
    assert info.saved_input_example_info is not None
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
    images = _digit_images()
    predicted = pyfunc.predict({"image": list(images)})
    names = [str(d) for d in range(10)]
    expected = _expected(make_config(), client, run, images, tmp_path)
    np.testing.assert_allclose(_probabilities(predicted, names), expected, atol=1e-5)
    assert list(predicted["class"]) == [names[i] for i in expected.argmax(axis=1)]
    # the same images as files: the same answer
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"digit{i}.png"))
        Image.fromarray(image).save(paths[-1])
    from_files = pyfunc.predict({"image": paths})
    np.testing.assert_allclose(_probabilities(from_files, names), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"image 0 is 9x8; this model takes 8x8 images"):
        pyfunc.predict({"image": [images[0][:, :8].repeat(2, axis=0)[:9]]})


@pytest.mark.parametrize(
    "overrides",
    [("freeze=linear_probe",), (*PEFT, "freeze=lora")],
    ids=["frozen_features", "lora"],
)
def test_frozen_feature_and_lora_runs_log_the_whole_network(
    overrides, train, runs, client, experiment, make_config, tmp_path
):
    """Cached features stood in for the backbone, or LoRA trained beside it: the model is
    the real backbone (LoRA merged) and the head."""
    train(*overrides)
    (run,) = runs()
    model = _logged_model(client, experiment, run.info.run_id)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
    size = 16 if "backbone=vit_tiny_p4" in overrides else 8  # the ViT takes 16 px only
    images = _digit_images(size)
    expected = _expected(make_config(*overrides), client, run, images, tmp_path)
    predicted = pyfunc.predict({"image": list(images)})
    np.testing.assert_allclose(
        _probabilities(predicted, [str(d) for d in range(10)]), expected, atol=1e-5
    )


def test_registered_served_and_reused_as_backbone_weights(
    train, runs, client, experiment, make_config, tracking_uri, tmp_path, capsys
):
    name = f"{experiment}-digits"
    train("freeze=linear_probe", f"register.name={name}", "register.alias=champion")
    (first,) = runs()
    version = client.get_model_version_by_alias(name, "champion")
    model = _logged_model(client, experiment, first.info.run_id)
    assert (version.source, version.run_id) == (f"models:/{model.model_id}", first.info.run_id)

    # served by MLflow's scoring server on the loopback: one request, two images
    from mlflow.pyfunc import scoring_server

    app = scoring_server.init(mlflow.pyfunc.load_model(f"models:/{name}@champion"))
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        images = _digit_images()
        body = {"dataframe_split": {"columns": ["image"], "data": [[i.tolist()] for i in images]}}
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60)
    finally:
        server.should_exit = True
        thread.join()
    assert answer.status_code == 200, answer.text
    served = _probabilities(answer.json()["predictions"], [str(d) for d in range(10)])
    cfg = make_config("freeze=linear_probe")
    np.testing.assert_allclose(served, _expected(cfg, client, first, images, tmp_path), atol=1e-5)

    # its backbone starts a new run: the new run's (frozen) backbone is the registered one
    train("freeze=linear_probe", f"backbone.weights_path=models:/{name}@champion")
    second = runs()[-1]
    registered = _backbone_of(model, tmp_path / "registered")
    reused = _backbone_of(_logged_model(client, experiment, second.info.run_id), tmp_path / "b")
    assert second.data.params["backbone.weights_path"] == f"models:/{name}@champion"
    assert registered.keys() == reused.keys()
    classifier = build_backbone_and_data(cfg)[0].classifier  # each run's own head
    for key in registered:
        if not key.startswith(classifier + "."):
            assert torch.equal(registered[key], reused[key]), key

    # what is read back is checked: a backbone whose sha256 is not the recorded one is refused
    client.set_logged_model_tags(model.model_id, {digest_tag(BACKBONE_FILE): "0" * 64})
    refused = pytest.raises(UserError, match=f"{BACKBONE_ARTIFACT} of model .* not the 0000")
    with refused, local_weights_file(f"models:/{name}/1"):
        pass

    # transferlab-register: a finished run's model afterwards, by version number
    register_main([second.info.run_id, name, "--tracking-uri", tracking_uri])
    assert "version 2: models:/" in capsys.readouterr().out
    assert client.get_model_version(name, "2").run_id == second.info.run_id


def test_runs_without_a_model_and_bad_names_are_one_line(
    train, runs, client, tracking_uri, experiment, capsys
):
    with pytest.raises(UserError, match=r"register.name='a/b' is refused .*cannot contain '/'"):
        train("register.name=a/b")
    with pytest.raises(UserError, match=r"register.alias='latest' is refused .*reserved"):
        train("register.name=digits", "register.alias=latest")
    with pytest.raises(UserError, match=r"register.name=digits: a scikit-learn head logs no"):
        train("register.name=digits", "freeze=linear_probe", "head=svm")
    with pytest.raises(UserError, match=r"register.name=digits with cv.folds=2: each fold's"):
        train("register.name=digits", "cv.folds=2")
    assert runs() == []  # refused before any run
    train("freeze=linear_probe", "head=svm")
    (svm,) = runs()
    with pytest.raises(SystemExit) as exited:
        register_main([svm.info.run_id, "digits", "--tracking-uri", tracking_uri])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "logged no model" in err and "head=svm" in err, err


@pytest.mark.slow
def test_a_fresh_process_loads_it_without_transferlab(train, runs, client, experiment, tmp_path):
    train()
    (run,) = runs()
    model = _logged_model(client, experiment, run.info.run_id)
    local = mlflow.artifacts.download_artifacts(
        model.artifact_location, dst_path=str(tmp_path / "model")
    )
    images = _digit_images()
    np.save(tmp_path / "images.npy", images)
    script = (
        "import json, sys, mlflow, numpy as np\n"
        f"model = mlflow.pyfunc.load_model({local!r})\n"
        "out = model.predict({'image': list(np.load('images.npy'))})\n"
        "print(json.dumps({'classes': list(out['class']), "
        "'transferlab': any(m.startswith('transferlab') for m in sys.modules)}))\n"
    )
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    (workdir / "images.npy").write_bytes((tmp_path / "images.npy").read_bytes())
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=workdir, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    in_process = mlflow.pyfunc.load_model(local).predict({"image": list(images)})
    assert answer == {"classes": list(in_process["class"]), "transferlab": False}
