"""Export: a run's best checkpoint as ONNX / TorchScript, rebuilt from what MLflow recorded."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import onnxruntime
import pytest
import torch

from transferlab.builders import build_backbone_and_data
from transferlab.errors import UserError
from transferlab.export import export_run, main


def _test_split(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's whole test split, composed from the test's own config."""
    _, data = build_backbone_and_data(cfg)
    batches = list(data.test_dataloader())
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def _onnx(path: Path):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])


def _torchscript(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path))
    return lambda images: loaded(images).detach()


def _accuracy(predict, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predict(images).argmax(dim=1) == labels).float().mean())


def test_both_formats_reproduce_the_run_and_are_logged(
    train, runs, client, tracking_uri, make_config, tmp_path
):
    train()
    (run,) = runs()
    run_id = run.info.run_id
    images, labels = _test_split(make_config())
    loaders = {"onnx": _onnx, "torchscript": _torchscript}
    outputs = {}
    for fmt, load in loaders.items():
        exported = export_run(run_id, fmt, tmp_path / "export", tracking_uri)
        assert exported.max_abs_diff <= 1e-4 and exported.checked_images == 64
        predict = load(exported.model)
        # the exported model is the run's best one: the same test accuracy, to the image
        accuracy = _accuracy(predict, images, labels)
        assert accuracy == pytest.approx(run.data.metrics["test/acc"], abs=1.5 / len(labels))
        outputs[fmt] = predict(images[:3])  # a batch size neither exported nor checked with
    assert (outputs["onnx"] - outputs["torchscript"]).abs().max() <= 1e-4
    logged = {Path(a.path).name for a in client.list_artifacts(run_id, "export")}
    assert logged == {"model.onnx", "model.pt", "preprocessing.json"}
    preprocessing = json.loads((tmp_path / "export" / "preprocessing.json").read_text())
    assert preprocessing["class_names"] == [str(d) for d in range(10)]
    assert preprocessing["input"]["shape"] == [None, 3, 8, 8]  # digits at their own size
    assert preprocessing["input_size"] is None and preprocessing["channels"] == 3
    assert preprocessing["mean"] == preprocessing["std"] == [0.5, 0.5, 0.5]
    assert preprocessing["output"]["shape"] == [None, 10]


def test_a_linear_probe_gets_its_backbone_from_the_source_run(
    train, runs, client, tracking_uri, make_config, tmp_path
):
    """Cached features: the checkpoint holds the head alone, and the backbone's weights file
    (a local copy of the source run's backbone.pt) is gone by export time."""
    overrides = ("compare_scratch=false", "freeze=linear_probe", "source.trainer.max_epochs=1")
    train(*overrides, config_name="digits_transfer")
    probe = next(r for r in runs() if r.data.tags["transferlab.role"] == "transfer")
    ckpt = client.download_artifacts(probe.info.run_id, "checkpoints/best.ckpt", str(tmp_path))
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert not any(k.startswith("backbone.network.") for k in state)
    for weights in (tmp_path / "outputs").rglob("backbone.pt"):
        weights.unlink()
    exported = export_run(probe.info.run_id, "torchscript", tmp_path / "probe", tracking_uri)
    assert exported.max_abs_diff <= 1e-4
    images, labels = _test_split(make_config(*overrides, config_name="digits_transfer"))
    accuracy = _accuracy(_torchscript(exported.model), images, labels)
    assert accuracy == pytest.approx(probe.data.metrics["test/acc"], abs=1.5 / len(labels))
    classes = json.loads(exported.preprocessing.read_text())["class_names"]
    assert classes == ["5", "6", "7", "8", "9"]


def test_bad_input_is_one_clear_line(train, runs, tracking_uri, tmp_path, capsys):
    out_dir = tmp_path / "export"
    out = ["--out", str(out_dir), "--tracking-uri", tracking_uri]
    for argv, message in [
        (["0" * 32, *out], f"error: cannot export {'0' * 32}"),
        (["0" * 32, "--format", "tflite", *out], "error: --format 'tflite' is unknown; use onnx"),
    ]:
        with pytest.raises(SystemExit) as exit_code:
            main(argv)
        assert exit_code.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err
    train("freeze=linear_probe", "head=svm")
    (svm,) = runs()
    with pytest.raises(UserError, match=r"head=svm.*skops.*not exported"):
        export_run(svm.info.run_id, "onnx", out_dir, tracking_uri)
    assert not out_dir.exists()
