"""Parameter-efficient fine-tuning (`freeze=lora|bitfit|vpt|adapter`): in real fits through
the app, exactly what a method names trains; LoRA and adapters start at the base model's
outputs and LoRA merges to the same outputs; a PEFT checkpoint holds what trained and
reloads to the run's predictions; resume is exact; bad input is one line."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import nn

from tests.test_resume import BASE
from transferlab.builders import build_backbone_and_data, build_module, build_trainer
from transferlab.data.feature_cache import weights_identity
from transferlab.data.module import TransferDataModule
from transferlab.data.transforms import Preprocessing
from transferlab.errors import UserError
from transferlab.finetune.adapted_checkpoint import BASE_KEY
from transferlab.finetune.peft import Adapter, LoRA, ParameterEfficient
from transferlab.finetune.peft_layers import merge_lora
from transferlab.models.backbone import Backbone
from transferlab.models.backbones import build_backbone
from transferlab.models.timm_backbone import feature_stages
from transferlab.module import TransferModule
from transferlab.train import run as run_task

# vit_tiny_p4 on three digit classes: 48 training images, 3 steps an epoch of 16.
TINY = [
    "backbone=vit_tiny_p4",
    "dataset.task.classes=[0,1,2]",
    "dataset.task.train_per_class=16",
    "loader.batch_size=16",
]
QUIET = [*TINY, "trainer.max_epochs=1", *BASE]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Two threads per process on a shared two-core machine oversubscribe it: a tiny ViT's
    forward pass then takes ten times as long."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FitSpy(pl.Callback):
    """Saves to `folder` what a fit changed (the module's state before its first step and
    after its last; the parameters that got a gradient, and a non-zero one) and the test
    predictions that follow."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.graded: set[str] = set()
        self.nonzero: set[str] = set()
        self.start: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module):
        self.start = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_after_backward(self, trainer, pl_module):
        for name, param in pl_module.named_parameters():
            if param.grad is not None:
                self.graded.add(name)
                if param.grad.any():
                    self.nonzero.add(name)

    def on_train_end(self, trainer, pl_module):
        self.folder.mkdir(parents=True, exist_ok=True)
        end = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        fit = {"start": self.start, "end": end, "graded": self.graded, "nonzero": self.nonzero}
        torch.save(fit, self.folder / "fit.pt")

    def on_test_end(self, trainer, pl_module):
        torch.save(torch.cat(pl_module.test_predictions), self.folder / "test.pt")


def spied(folder: Path) -> str:
    return f"+callbacks.spy={{_target_: tests.test_peft.FitSpy, folder: '{folder}'}}"


def bias(name: str) -> bool:
    return name.rpartition(".")[2] in ("bias", "in_proj_bias")  # torchvision's attention's


def layer_norm_weights(network: nn.Module) -> set[str]:
    return {f"{n}.weight" for n, m in network.named_modules() if isinstance(m, nn.LayerNorm)}


# What each method trains besides the head, by the network's parameter names: written out
# here, not asked of the strategy.
NAMED: dict[str, Callable[[str, nn.Module], bool]] = {
    "lora": lambda name, network: ".lora_A." in name or ".lora_B." in name,
    "bitfit": lambda name, network: bias(name),
    "bitfit-norms": lambda name, network: bias(name) or name in layer_norm_weights(network),
    "vpt": lambda name, network: name.endswith(".vpt.tokens"),
    "adapter": lambda name, network: ".adapter." in name,
}
OVERRIDES = {
    "lora": ["freeze=lora"],
    "bitfit": ["freeze=bitfit"],
    "bitfit-norms": ["freeze=bitfit", "freeze.norms=true"],
    "vpt": ["freeze=vpt"],
    "adapter": ["freeze=adapter"],
}


def fresh_module(cfg: DictConfig) -> tuple[TransferModule, TransferDataModule]:
    """The module a run on `cfg` starts from: seeded, so the same base (and adapter) weights."""
    backbone, data = build_backbone_and_data(cfg)
    return build_module(cfg, backbone, data.num_classes), data


@pytest.mark.parametrize("method", list(NAMED))
def test_each_method_trains_exactly_what_it_names_and_logs_its_share(
    make_config, runs, tmp_path, method
):
    cfg = make_config(*QUIET, *OVERRIDES[method], spied(tmp_path / "spy"))
    run_task(cfg)
    fit = torch.load(tmp_path / "spy" / "fit.pt", weights_only=True)
    module, _ = fresh_module(cfg)
    network = module.backbone.network
    own = {
        f"backbone.network.{n}" for n, _ in network.named_parameters() if NAMED[method](n, network)
    }
    head = {f"head.{n}" for n, _ in module.head.named_parameters()}
    assert own and head
    # it started from the base model (and the seeded adapter) the config builds
    assert fit["start"].keys() == module.state_dict().keys()
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in fit["start"].items())
    assert fit["graded"] == own | head
    assert fit["nonzero"] == own | head
    changed = {k for k, v in fit["start"].items() if not torch.equal(v, fit["end"][k])}
    assert changed == own | head  # every other tensor (buffers too) bit-identical

    (run,) = runs()
    trained = sum(fit["start"][k].numel() for k in own | head)
    total = sum(p.numel() for p in [*network.parameters(), *module.head.parameters()])
    metrics = run.data.metrics
    assert metrics["model/params_trainable"] == trained
    assert metrics["model/params_trainable_pct"] == pytest.approx(100 * trained / total)
    assert metrics["model/adapter_size_mb"] == pytest.approx(trained * 4 / 1e6)  # float32


# --- starting point, targets and merging, on torchvision's and timm's ViTs -------------------


def timm_vit() -> Backbone:
    """timm's ViT-Tiny at 32 px (patch 4), wrapped as backbone=timm wraps its models."""
    import timm

    network = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4)
    stages = feature_stages(network, "head")
    return Backbone(network, "head", stages, Preprocessing(input_size=32), "vit_tiny_timm")


VITS: dict[str, tuple[Callable[[], Backbone], int]] = {  # the builder, its input size
    "vit_tiny_p4": (lambda: build_backbone("vit_tiny_p4"), 16),
    "timm": (timm_vit, 32),
}
AUTO_TARGETS = {  # torchvision's attention as a whole (6 blocks); timm's fused qkv (12)
    "vit_tiny_p4": {
        f"encoder.layers.encoder_layer_{i}.{layer}"
        for i in range(6)
        for layer in ("self_attention", "mlp.0", "mlp.3")
    },
    "timm": {
        f"blocks.{i}.{layer}"
        for i in range(12)
        for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    },
}


def vit_and_images(arch: str) -> tuple[Backbone, torch.Tensor]:
    build, size = VITS[arch]
    torch.manual_seed(0)
    return build().eval(), torch.randn(4, 3, size, size)


def lora_layers(network: nn.Module) -> set[str]:
    """The layers peft wrapped (less the out_proj it wraps inside an attention it wrapped)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    tuned = [n for n, m in network.named_modules() if isinstance(m, BaseTunerLayer)]
    return {n for n in tuned if ".base_layer." not in n}


def adapted(backbone: Backbone, strategy: ParameterEfficient) -> Backbone:
    copied = copy.deepcopy(backbone)
    strategy.adapt(copied)
    return copied


def named(backbone: Backbone, part: str) -> list[torch.Tensor]:
    return [p.detach() for n, p in backbone.network.named_parameters() if part in n]


@pytest.mark.parametrize("arch", list(VITS))
def test_lora_and_adapters_start_exactly_at_the_base_models_outputs(arch):
    base, images = vit_and_images(arch)
    lora, adapter = adapted(base, LoRA()), adapted(base, Adapter())
    assert named(lora, "lora_B") and not any(b.any() for b in named(lora, "lora_B"))
    assert named(lora, "lora_A") and all(a.any() for a in named(lora, "lora_A"))
    assert named(adapter, "adapter.down") and all(d.any() for d in named(adapter, "adapter.down"))
    with torch.no_grad():
        expected = base(images)
        assert torch.equal(lora(images), expected)
        assert torch.equal(adapter(images), expected)


@pytest.mark.parametrize("arch", list(VITS))
def test_lora_auto_targets_attention_and_mlp_layers_not_the_patch_embedding(arch):
    backbone, _ = vit_and_images(arch)
    lora = adapted(backbone, LoRA(target="auto"))
    assert lora_layers(lora.network) == AUTO_TARGETS[arch]


@pytest.mark.parametrize("arch", list(VITS))
def test_merged_lora_gives_the_unmerged_outputs_and_leaves_no_lora_layer(arch):
    base, images = vit_and_images(arch)
    lora = adapted(base, LoRA()).eval()
    with torch.no_grad():
        for b in named(lora, "lora_B"):
            b.normal_(0, 0.02)  # as after training: the updates are ~10% of the weights
        unmerged = lora(images)
        assert (unmerged - base(images)).abs().max() > 0.1
        merge_lora(lora.network)
        merged = lora(images)
    assert lora_layers(lora.network) == set()
    assert lora.network.state_dict().keys() == base.network.state_dict().keys()
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)


# --- checkpoints, resume ----------------------------------------------------------------------


def test_a_lora_checkpoint_holds_what_trained_and_reloads_to_the_runs_predictions(
    make_config, runs, client, tmp_path
):
    cfg = make_config(*QUIET, "freeze=lora", spied(tmp_path / "spy"))
    run_task(cfg)
    (run,) = runs()
    fit = torch.load(tmp_path / "spy" / "fit.pt", weights_only=True)
    predictions = torch.load(tmp_path / "spy" / "test.pt", weights_only=True)
    best = client.download_artifacts(run.info.run_id, "checkpoints/best.ckpt", str(tmp_path))
    checkpoint = torch.load(best, weights_only=True)

    trained = {k for k in fit["end"] if k.startswith("head.") or ".lora_" in k}
    assert checkpoint["state_dict"].keys() == trained
    stored = sum(v.numel() for v in checkpoint["state_dict"].values())
    assert stored < 0.15 * sum(v.numel() for v in fit["end"].values())  # the model's: ~850k
    pl.seed_everything(cfg.seed)
    base = build_backbone("vit_tiny_p4")
    digest = weights_identity(base.network)
    assert checkpoint[BASE_KEY]["sha256"] == digest

    module, data = fresh_module(cfg)  # base rebuilt, LoRA's B at zero, a new head
    trainer = build_trainer(cfg, False, tmp_path / "reloaded", "32-true")
    trainer.test(module, datamodule=data, ckpt_path=best, verbose=False, weights_only=True)
    assert all(torch.equal(v, fit["end"][k]) for k, v in module.state_dict().items())
    assert torch.equal(torch.cat(module.test_predictions), predictions)
    reloaded_loss = trainer.callback_metrics["test/loss"].item()
    assert reloaded_loss == pytest.approx(run.data.metrics["test/loss"], rel=1e-6)

    # on other base weights (another seed), it is refused, naming both digests
    other, data = fresh_module(make_config(*QUIET, "freeze=lora", "seed=1"))
    with pytest.raises(UserError) as refused:
        trainer.test(other, datamodule=data, ckpt_path=best, verbose=False, weights_only=True)
    message = str(refused.value)
    assert digest in message and other.backbone.base_sha256 in message
    assert digest != other.backbone.base_sha256 and "\n" not in message


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected", "names", "recorded"),
    [
        (
            ["freeze=lora", "freeze.target=[nowhere]"],
            "freeze.target=['nowhere'] matches no layer LoRA can adapt",
            ("conv_proj", "encoder.layers.encoder_layer_0.self_attention"),
            ["FAILED"],  # found where the backbone is built, the run started
        ),
        (
            ["backbone=small_cnn", "freeze=vpt"],
            "freeze=vpt (visual prompt tuning) needs a vision transformer",
            ("small_cnn", "freeze=lora"),
            ["FAILED"],
        ),
        (["freeze=lora", "freeze.r=0"], "freeze.r=0 must be a whole number >= 1", (), []),
    ],
    ids=["lora-target-matches-nothing", "vpt-on-a-cnn", "lora-r-0"],
)
def test_bad_peft_settings_are_one_line_before_training(
    make_config, runs, overrides, expected, names, recorded
):
    with pytest.raises(UserError) as error:
        run_task(make_config(*QUIET, *overrides))
    message = str(error.value)
    assert message.startswith(expected) and "\n" not in message, message
    assert all(name in message for name in names), message
    assert [run.info.status for run in runs()] == recorded
    assert all(not run.data.metrics for run in runs())  # nothing trained
