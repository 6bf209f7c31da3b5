"""The tracker keys of conf/tracker reach the tracker: corrected measurements by default, the study's by config."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig

from ndt.running.train import run_dir_for, run_experiment
from ndt.running.validation import ConfigError
from ndt.storage.parquet import read_metrics

SHORT = ("arch=cnn_shallow", "trainer.max_steps=6", "trainer.checkpoint.every=6", "trainer.log_every=6")
#: The study's measurement choices, every one reachable by config.
STUDY = (
    "tracker.conv_reduction=spatial_mean",
    "tracker.hook_point=pre",
    "tracker.mask_padding=false",
    "tracker.sequence_reduction=feature_mean",
)


def test_defaults_are_the_corrected_measurements(compose_cfg: Callable[..., DictConfig]) -> None:
    t = compose_cfg().tracker
    assert (t.conv_reduction, t.hook_point, t.mask_padding, t.max_rows) == ("positions", "pre", True, 4096)


@pytest.mark.parametrize("study", [False, True])
def test_the_run_measures_what_the_config_says(compose_cfg: Callable[..., DictConfig], study: bool) -> None:
    cfg = compose_cfg(*SHORT, *(STUDY if study else ()), f"sweep_name={'study' if study else 'single'}")
    assert run_experiment(cfg)["status"] == "complete"
    conv0 = read_metrics(run_dir_for(cfg) / "metrics").query("layer == 'conv.0'")
    # 160 probe images of 28 x 28: spatial means give one row per image; positions 4,096 of 125,440.
    assert set(conv0.n_samples) == ({160} if study else {4096})
    assert set(conv0.n_features) == {32}


def test_a_misspelt_or_mistyped_tracker_key_fails_at_composition(
    compose_cfg: Callable[..., DictConfig],
) -> None:
    with pytest.raises(ConfigCompositionException, match="conv_reducton"):
        compose_cfg("tracker.conv_reducton=spatial_mean")
    with pytest.raises(Exception, match="max_rows"):
        compose_cfg("tracker.max_rows=many")


def test_an_unknown_choice_is_refused_before_the_run_starts(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg(*SHORT, "tracker.conv_reduction=pixels")
    with pytest.raises(ConfigError, match=r"tracker.conv_reduction=.*pixels.*positions, spatial_mean"):
        run_experiment(cfg)
    assert not run_dir_for(cfg).exists()  # nothing written
