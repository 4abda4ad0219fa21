"""Export: a run's best checkpoint as ONNX / TorchScript, rebuilt from what MLflow recorded."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import onnxruntime
import pytest
import torch

from transferlab.builders import build_backbone_and_data
from transferlab.components import build
from transferlab.errors import UserError
from transferlab.export import export_run, main
from transferlab.models.backbones import build_backbone
from transferlab.models.inference_cost import Classifier


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


# --- parameter-efficient runs: a checkpoint of what trained, on base weights rebuilt ---------

PEFT = ("backbone=vit_tiny_p4", "trainer.max_epochs=1", "dataset.task.train_per_class=20")


def _trained_model(cfg, client, run_id: str, folder: Path) -> Classifier:
    """The run's best model as training left it (LoRA unmerged, prompts and adapters in
    their hooks): the base the config builds, the checkpoint's trained tensors on it."""
    backbone, data = build_backbone_and_data(cfg)
    head = build(cfg.head, "head", in_features=backbone.feature_dim, num_classes=data.num_classes)
    model = Classifier(backbone.network, head).eval()
    ckpt = client.download_artifacts(run_id, "checkpoints/best.ckpt", str(folder))
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    trained = {k.removeprefix("backbone."): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(trained, strict=False)
    assert missing and not unexpected  # the checkpoint holds what trained, nothing else
    return model


def _outputs(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(images)


def _save_base(path: Path, seed: int) -> Path:
    """A vit_tiny_p4 weights file, as a user's own pretrained base."""
    torch.manual_seed(seed)
    torch.save(build_backbone("vit_tiny_p4").source_state_dict(), path)
    return path


def test_lora_is_merged_into_the_base_weights_and_matches_the_trained_model(
    train, runs, client, tracking_uri, make_config, tmp_path, capsys
):
    base = _save_base(tmp_path / "base.pt", seed=0)
    overrides = (*PEFT, "freeze=lora", f"backbone.weights_path='{base}'")
    train(*overrides)
    (run,) = runs()
    run_id = run.info.run_id
    cfg = make_config(*overrides)
    trained = _trained_model(cfg, client, run_id, tmp_path / "ckpt")
    lora_b = [p for n, p in trained.named_parameters() if ".lora_B." in n]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b)  # there is an update to merge
    images, _ = _test_split(cfg)
    expected = _outputs(trained, images)
    # TorchScript: the ONNX path of a merged network is the plain one (test above), and an
    # ONNX export costs ~40 s here
    exported = export_run(run_id, "torchscript", tmp_path / "export", tracking_uri)
    assert exported.max_abs_diff <= 1e-4
    # the merged file gives the unmerged trained model's outputs, on the whole test split
    assert (_torchscript(exported.model)(images) - expected).abs().max() <= 1e-4
    keys = list(torch.jit.load(str(exported.model)).state_dict())
    assert keys and not [k for k in keys if "lora" in k]
    preprocessing = json.loads((tmp_path / "export" / "preprocessing.json").read_text())
    adaptation = preprocessing["adaptation"]
    assert adaptation["method"] == "lora" and adaptation["lora_merged"] is True
    assert adaptation["base_sha256"].startswith("sha256:")

    _save_base(base, seed=1)  # the base weights file changed since the run trained on it
    argv = [run_id, "--out", str(tmp_path / "again"), "--tracking-uri", tracking_uri]
    with pytest.raises(SystemExit) as exit_code:
        main(argv)
    assert exit_code.value.code == 1
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    recorded = adaptation["base_sha256"]
    assert line.startswith(
        f"error: the checkpoint's adapter was trained on base weights {recorded}"
    )
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize(("method", "fmt"), [("vpt", "torchscript"), ("adapter", "onnx")])
def test_prompts_and_adapters_are_exported_unmerged(
    method, fmt, train, runs, client, tracking_uri, make_config, tmp_path
):
    """VPT's prompts and the adapters act through forward hooks: the exported graph holds
    them (without them the outputs would differ far beyond the tolerance)."""
    overrides = (*PEFT, f"freeze={method}")
    train(*overrides)
    (run,) = runs()
    cfg = make_config(*overrides)
    trained = _trained_model(cfg, client, run.info.run_id, tmp_path / "ckpt")
    images, labels = _test_split(cfg)
    expected = _outputs(trained, images)
    plain, _ = build_backbone_and_data(make_config(*PEFT))  # the same seeded base, no hooks
    without = _outputs(Classifier(plain.network, trained.head).eval(), images)
    assert (without - expected).abs().max() > 1e-2
    exported = export_run(run.info.run_id, fmt, tmp_path / "export", tracking_uri)
    assert exported.max_abs_diff <= 1e-4
    predict = {"onnx": _onnx, "torchscript": _torchscript}[fmt](exported.model)
    assert (predict(images) - expected).abs().max() <= 1e-4
    accuracy = _accuracy(predict, images, labels)
    assert accuracy == pytest.approx(run.data.metrics["test/acc"], abs=1.5 / len(labels))
    adaptation = json.loads(exported.preprocessing.read_text())["adaptation"]
    assert adaptation["method"] == method and adaptation["lora_merged"] is False
