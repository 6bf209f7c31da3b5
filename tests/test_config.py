"""The Hydra config: every pair composes and builds, errors are clear, the paper sweep is the study's grid."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ValidationError

from ndt.data.spec import dataset_spec
from ndt.models import ARCH_NAMES, IncompatiblePairError, build_model, describe

DATASETS = ("mnist", "fashion_mnist", "qmnist", "ag_news", "digits")


@pytest.mark.parametrize(("arch", "dataset"), list(itertools.product(ARCH_NAMES, DATASETS)))
def test_every_pair_composes_and_builds(
    compose_cfg: Callable[..., DictConfig], arch: str, dataset: str
) -> None:
    cfg = compose_cfg(f"arch={arch}", f"dataset={dataset}")
    assert (cfg.arch.name, cfg.dataset.name) == (arch, dataset)
    spec = dataset_spec(cfg.dataset.name, cfg.dataset.encoding)
    if arch.startswith("cnn") and dataset == "ag_news":
        with pytest.raises(IncompatiblePairError, match="image"):
            build_model(cfg.arch.name, spec)
        return
    model = build_model(cfg.arch.name, spec)
    assert describe(model).family == arch.split("_")[0]


def test_study_protocol_defaults(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg()
    assert (cfg.optim.name, cfg.optim.lr, cfg.trainer.max_steps, cfg.trainer.batch_size) == (
        "adam",
        1e-3,
        2000,
        32,
    )
    assert (cfg.dataset.train_subset, cfg.dataset.test_subset, cfg.tracker.probe_size) == (1500, 250, 160)
    assert (cfg.tracker.sampling_frequency, cfg.seed) == (5, 0)
    assert len(range(0, cfg.trainer.max_steps, cfg.tracker.sampling_frequency)) == 400


def test_misspelt_key_fails_at_start_up(compose_cfg: Callable[..., DictConfig]) -> None:
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg("trainer.max_step=10")
    assert isinstance(e.value.__cause__, ConfigAttributeError)
    assert "max_step" in str(e.value.__cause__) and "TrainerConfig" in str(e.value.__cause__)


def test_wrong_type_fails_at_start_up(compose_cfg: Callable[..., DictConfig]) -> None:
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg("trainer.batch_size=big")
    assert isinstance(e.value.__cause__, ValidationError)


def test_unknown_arch_names_the_choices(compose_cfg: Callable[..., DictConfig]) -> None:
    with pytest.raises(ConfigCompositionException, match="mlp_narrow"):
        compose_cfg("arch=mlp_tiny")


def test_paper_sweep_is_the_studys_grid(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("+sweep=paper", return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    archs, datasets = params.arch.split(","), params.dataset.split(",")
    assert sorted(archs) == sorted(ARCH_NAMES) and sorted(datasets) == [
        "ag_news",
        "fashion_mnist",
        "mnist",
        "qmnist",
    ]
    pairs = list(itertools.product(archs, datasets))
    compatible = [(a, d) for a, d in pairs if not (a.startswith("cnn") and d == "ag_news")]
    assert len(pairs) == 60 and len(compatible) == 57  # 8x4 MLP + 3x3 CNN + 4x4 transformer
    assert cfg.sweep_name == "paper" and str(cfg.hydra.mode) == "RunMode.MULTIRUN"


# The study's measurement choices, written out here (not read from conf/protocol/study.yaml): spatial
# mean of conv outputs, PAD averaged in, pre-activation outputs, the study's detector.
STUDY_CHOICES = {"conv_reduction": "spatial_mean", "mask_padding": False, "hook_point": "pre"}


def test_paper_sweep_runs_the_study_protocol_and_the_default_is_corrected(
    compose_cfg: Callable[..., DictConfig],
) -> None:
    paper = compose_cfg("+sweep=paper")
    assert (paper.protocol.name, paper.protocol.detector) == ("study", "study")
    assert {k: paper.tracker[k] for k in STUDY_CHOICES} == STUDY_CHOICES
    single = compose_cfg()
    assert single.protocol.name == "corrected" and single.protocol.detector is None
    assert (single.tracker.conv_reduction, single.tracker.mask_padding) == ("positions", True)
    # protocol=study on a single run gives exactly the paper sweep's tracker settings
    assert compose_cfg("protocol=study").tracker == paper.tracker


def test_corrected_sweep_is_the_grid_with_five_seeds(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("+sweep=corrected", return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert sorted(params.arch.split(",")) == sorted(ARCH_NAMES)
    assert params.seed == "0,1,2,3,4" and cfg.protocol.name == "corrected"
    assert cfg.sweep_name == "corrected"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("tracker.conv_reduction=mean", "tracker.conv_reduction"),
        ("tracker.hook_point=after", "tracker.hook_point"),
        ("tracker.max_rows=0", "tracker.max_rows"),
        ("protocol.name=mine", "protocol.name"),
        ("protocol.detector=zscore", "protocol.detector"),
    ],
)
def test_measurement_and_protocol_values_are_checked(
    compose_cfg: Callable[..., DictConfig], override: str, key: str
) -> None:
    from ndt.running.validation import check_config

    assert check_config(compose_cfg()) == []
    problems = check_config(compose_cfg(override))
    assert len(problems) == 1 and problems[0].startswith(f"{key}=")
