"""The extended vision architectures (issue 13): ResNet-18 and a small ViT from torchvision.

Parameter counts are written out here from the layer shapes, not read from the code under test; each
architecture trains 20 steps through the real runner on 28x28x1 (digits) and 32x32x3 (CIFAR-10 files
the test writes), is tracked at its conv/attention layers, and `ndt.investigate` reports on it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from cifar10_files import accept_files, write_cifar10
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ndt.analysis import FeatureVisualizer
from ndt.data.spec import dataset_spec
from ndt.models import ARCH_NAMES, EXTENDED_ARCH_NAMES, IncompatiblePairError, build_model, describe
from ndt.models.registry import arch_family, arch_spec, check_compatible
from ndt.report import InvestigateOptions, investigate
from ndt.running.train import restore_at, run_dir_for, run_experiment
from ndt.storage.parquet import read_metrics

SHAPES = {"digits": (1, 28, 28), "cifar10": (3, 32, 32)}
VISION_ARCHS = (
    "resnet18",
    "vit_small",
)  # the image models of EXTENDED_ARCH_NAMES (gpt2_mini: test_extended_lm.py)

# -- parameter counts by hand ----------------------------------------------------------------------


def conv(k: int, cin: int, cout: int, bias: bool = False) -> int:
    return k * k * cin * cout + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # weight and bias (running statistics are buffers)


def linear(fin: int, fout: int) -> int:
    return fin * fout + fout


def resnet18_params(cin: int, classes: int) -> int:
    """CIFAR stem (3x3 conv, no bias) + BN, 4 stages of 2 BasicBlocks, global pool, fc."""
    total = conv(3, cin, 64) + bn(64)
    prev = 64
    for width in (64, 128, 256, 512):
        for block in range(2):
            cin_block = prev if block == 0 else width
            total += conv(3, cin_block, width) + bn(width) + conv(3, width, width) + bn(width)
            if block == 0 and cin_block != width:  # stride-2 stages: 1x1 projection + BN on the shortcut
                total += conv(1, cin_block, width) + bn(width)
        prev = width
    return total + linear(512, classes)


def vit_params(
    cin: int, side: int, classes: int, p: int = 4, d: int = 192, layers: int = 6, mlp: int = 768
) -> int:
    """Patch conv (bias), class token, positional embedding, per layer LN/MHA/LN/MLP, final LN, head."""
    tokens = (side // p) ** 2 + 1
    per_layer = (
        2 * d  # ln_1
        + (3 * d * d + 3 * d)  # MHA in_proj (q, k, v)
        + linear(d, d)  # MHA out_proj
        + 2 * d  # ln_2
        + linear(d, mlp)
        + linear(mlp, d)
    )
    return conv(p, cin, d, bias=True) + d + tokens * d + layers * per_layer + 2 * d + linear(d, classes)


def test_hand_counts() -> None:
    # The arithmetic itself, against published totals (torchvision's model docs): the ImageNet
    # ResNet-18 (7x7 stem from 3 channels, 1,000 classes) has 11,689,512 parameters, ours differing only
    # in the stem conv; ViT-B/16 (224 px, patch 16, d 768, 12 layers, MLP 3072) has 86,567,656.
    assert resnet18_params(3, 1000) - conv(3, 3, 64) + conv(7, 3, 64) == 11_689_512
    assert vit_params(3, 224, 1000, p=16, d=768, layers=12, mlp=3072) == 86_567_656


@pytest.mark.parametrize(("arch", "dataset"), list(itertools.product(VISION_ARCHS, SHAPES)))
def test_builds_with_the_hand_counted_parameters(arch: str, dataset: str) -> None:
    cin, side, _ = SHAPES[dataset]
    model = build_model(arch, dataset)
    info = describe(model)
    expected = resnet18_params(cin, 10) if arch == "resnet18" else vit_params(cin, side, 10)
    assert info.params == expected
    if arch == "resnet18":
        # depth 18: stem + 16 block convs + fc; width: mean channels of those 17 convs
        assert (info.family, info.depth) == ("resnet", 18)
        assert info.width == pytest.approx((64 + 4 * (64 + 128 + 256 + 512)) / 17)
    else:
        assert (info.family, info.depth, info.width) == ("vit", 6, 192.0)
    x = torch.randn(2, cin, side, side)
    assert tuple(model(x).shape) == (2, 10)
    assert tuple(model(x.flatten(1)).shape) == (2, 10)  # flattened images too, like the study's models


def test_resnet_is_torchvisions_resnet18_but_for_the_stem() -> None:
    ours = build_model("resnet18", "cifar10").state_dict()
    ref = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    assert ours.keys() == ref.keys()
    differ = {k for k in ref if ours[k].shape != ref[k].shape}
    assert differ == {"conv1.weight"} and tuple(ours["conv1.weight"].shape) == (64, 3, 3, 3)
    model = build_model("resnet18", "mnist")
    assert isinstance(model.maxpool, torch.nn.Identity) and model.conv1.stride == (1, 1)
    assert tuple(model.conv1.weight.shape) == (64, 1, 3, 3)


def test_vit_takes_one_channel_and_is_initialised_like_torchvision() -> None:
    torch.manual_seed(0)
    model = build_model("vit_small", "mnist")
    assert tuple(model.conv_proj.weight.shape) == (192, 1, 4, 4)
    # torchvision: trunc_normal(std = 1 / sqrt(fan_in)) with fan_in = 1 * 4 * 4, zero bias
    std = float(model.conv_proj.weight.detach().std())
    assert 0.8 * 0.25 < std < 1.05 * 0.25 and float(model.conv_proj.bias.detach().abs().max()) == 0.0


def test_registry_keeps_the_study_apart() -> None:
    assert len(ARCH_NAMES) == 15 and not set(EXTENDED_ARCH_NAMES) & set(ARCH_NAMES)
    assert [arch_family(a) for a in EXTENDED_ARCH_NAMES] == ["resnet", "vit", "lm"]
    assert arch_spec("resnet18").depth == 18
    for arch in VISION_ARCHS:
        with pytest.raises(IncompatiblePairError, match="image"):
            build_model(arch, "ag_news")
    with pytest.raises(ValueError, match="resnet18"):
        arch_spec("resnet50")  # the message lists the extended names too


def test_extended_sweep_composes(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("+sweep=extended", return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params.arch.split(",") == ["resnet18", "vit_small", "gpt2_mini"]
    assert params.dataset.split(",") == ["mnist", "fashion_mnist", "qmnist", "cifar10", "ag_news_lm"]
    assert cfg.sweep_name == "extended" and cfg.protocol.name == "corrected"
    built, skipped = [], []
    for arch, dataset in itertools.product(params.arch.split(","), params.dataset.split(",")):
        one = compose_cfg(f"arch={arch}", f"dataset={dataset}")
        if (arch == "gpt2_mini") != (dataset == "ag_news_lm"):  # a language model needs next-token text
            with pytest.raises(IncompatiblePairError):
                check_compatible(one.arch.name, dataset_spec(one.dataset.name))
            skipped.append((arch, dataset))
        elif arch != "gpt2_mini":  # gpt2_mini's build is tested in test_extended_lm.py (needs transformers)
            assert describe(build_model(one.arch.name, dataset_spec(one.dataset.name))).arch == arch
            built.append((arch, dataset))
    assert len(built) == 8 and len(skipped) == 6  # 8 vision runs + gpt2_mini x ag_news_lm; 6 skipped


# -- training and tracking through the runner -------------------------------------------------------

#: 20 steps at batch 4, measured every 5 on a 6-image probe; checkpoints at 10 and 20 (for replays).
TINY = (
    "trainer.max_steps=20",
    "trainer.batch_size=4",
    "trainer.checkpoint.every=10",
    "trainer.log_every=10",
    "tracker.probe_size=6",
    "dataset.train_subset=20",
    "dataset.test_subset=6",
)
#: One run per architecture: ResNet-18 on 28x28x1 (digits), the ViT on 32x32x3 (the CIFAR-10 files
#: written by the test, through the real loader); the builds above cover the other shape of each.
RUNS = {"resnet18": "digits", "vit_small": "cifar10"}

RESNET_LAYERS = (
    {"conv1", "fc"}
    | {f"layer{s}.{b}.conv{c}" for s in range(1, 5) for b in range(2) for c in (1, 2)}
    | {f"layer{s}.0.downsample.0" for s in (2, 3, 4)}
)
VIT_LAYERS = (
    {"conv_proj", "heads.head"}
    | {f"encoder.layers.encoder_layer_{i}.self_attention" for i in range(6)}
    | {f"encoder.layers.encoder_layer_{i}.mlp.{j}" for i in range(6) for j in (0, 3)}
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{arch: run directory} of the two tiny runs, trained once for this module's tests."""
    root = tmp_path_factory.mktemp("extended")
    write_cifar10(root / "data")
    out = {}
    with pytest.MonkeyPatch.context() as mp, initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        accept_files(mp, root / "data")
        for arch, dataset in RUNS.items():
            cfg = compose(
                "config",
                overrides=[
                    f"paths.results_dir={root / 'results'}",
                    f"paths.data_dir={root / 'data'}",
                    f"arch={arch}",
                    f"dataset={dataset}",
                    *TINY,
                ],
            )
            record = run_experiment(cfg)
            assert record["status"] == "complete", record.get("error")
            out[arch] = run_dir_for(cfg)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(RUNS))
def test_trains_20_steps_and_is_tracked(runs: dict[str, Path], arch: str) -> None:
    run_dir = runs[arch]
    record = json.loads((run_dir / "run.json").read_text())
    cin, side, _ = SHAPES[RUNS[arch]]
    expected = resnet18_params(cin, 10) if arch == "resnet18" else vit_params(cin, side, 10)
    assert (record["family"], record["params"], record["dataset"]) == (
        arch_family(arch),
        expected,
        RUNS[arch],
    )
    df = read_metrics(run_dir / "metrics")
    layers = RESNET_LAYERS if arch == "resnet18" else VIT_LAYERS
    assert set(df.layer) == layers and len(layers) == (21 if arch == "resnet18" else 20)
    assert sorted(df.step.unique()) == [0, 5, 10, 15]
    assert df.groupby("step").size().eq(len(layers)).all()
    # Conv layers: one row per (image, position), capped at tracker.max_rows = 4,096 (conv1: 6 x 784
    # positions, so capped; the last stage runs at 4x4: 6 x 16 = 96); the ViT's patch conv: 6 x 8 x 8;
    # attention and MLP layers: the token mean, one row per probe image.
    if arch == "resnet18":
        expected_rows = {"conv1": 4096, "layer4.1.conv2": 96, "fc": 6}
    else:
        expected_rows = {"conv_proj": 6 * 8 * 8, "encoder.layers.encoder_layer_0.self_attention": 6}
    for layer, n in expected_rows.items():
        assert set(df.loc[df.layer == layer, "n_samples"]) == {n}, layer
    # Features: a conv's channels, the MLP's hidden width, the classes.
    if arch == "resnet18":
        expected_features = {"conv1": 64, "layer4.1.conv2": 512, "layer2.0.downsample.0": 128, "fc": 10}
    else:
        expected_features = {"conv_proj": 192, "encoder.layers.encoder_layer_0.mlp.0": 768, "heads.head": 10}
    for layer, k in expected_features.items():
        assert set(df.loc[df.layer == layer, "n_features"]) == {k}, layer
    assert np.isfinite(df["participation_ratio"].to_numpy(dtype=float)).all()


# -- ndt.investigate ---------------------------------------------------------------------------------

#: The layers compared (a few, for time: the report's cost grows with the layers and their rows).
INVESTIGATED = {
    "resnet18": ("conv1", "layer4.1.conv2", "fc"),
    "vit_small": ("conv_proj", "encoder.layers.encoder_layer_5.self_attention", "heads.head"),
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(RUNS))
def test_investigate_reports_on_each(
    runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, arch: str
) -> None:
    accept_files(monkeypatch, runs[arch].parents[2] / "data")  # the replay reloads the CIFAR-10 files
    # The causal tests run on the ViT only (on ResNet-18 they cost most of a minute here; they use
    # nothing family-specific, so the ViT's run exercises the same code).
    causal = arch == "vit_small"
    options = InvestigateOptions(
        step=15,
        layers=INVESTIGATED[arch],
        samples=2,
        causal=causal,
        draws=2,
        k=1,
        control=False,
        out=tmp_path / "report",
    )
    result = investigate(runs[arch], options)
    summary = result.summary
    assert summary["replay"]["check"]["ok"]  # the replayed models are the ones the tracker measured
    assert sorted(r["layer"] for r in summary["layers"]) == sorted(INVESTIGATED[arch])
    names = {f["name"] for f in summary["figures"]}
    if arch == "resnet18":
        assert {"gradcam", "saliency", "feature_maps"} <= names and "attention" not in names
    else:
        assert {"attention", "saliency", "causal"} <= names and "gradcam" not in names
        # The maps themselves: torchvision's EncoderBlock asks for no weights; the visualizer's re-run
        # does, per head: 6 layers of (B, 3 heads, 65, 65) (64 patches + the class token), rows summing to 1.
        state = restore_at(runs[arch], 15)
        assert state.probe is not None
        maps = FeatureVisualizer(state.model).attention_maps(state.probe[:2])
        assert list(maps) == [f"encoder.layers.encoder_layer_{i}.self_attention" for i in range(6)]
        for w in maps.values():
            assert w.shape == (2, 3, 65, 65) and (w >= 0).all()
            np.testing.assert_allclose(w.sum(axis=-1), 1.0, atol=1e-6)
    page = result.report.read_text()
    assert page.count('src="data:image/png;base64,') == len(summary["figures"])
