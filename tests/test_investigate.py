"""``python -m ndt.investigate``: exact replay, moments, the analysis on real captures, the report, errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir

from ndt.analysis import FeatureVisualizer, linear_cka, pca
from ndt.detect.study import detect_jumps
from ndt.investigate import main
from ndt.measure.capture import ActivationCapture
from ndt.report import (
    InvestigateOptions,
    InvestigationError,
    capture_probe,
    choose_moments,
    investigate,
    parse_options,
    rank_events,
)
from ndt.running.checkpoint import checkpoint_path, load_checkpoint
from ndt.running.train import TrainingState, restore_at, run_dir_for, run_experiment, training_step
from ndt.storage.parquet import read_metrics

#: A short digits run with checkpoints at 20, 40, 60: replays between them are a few steps.
SHORT = ("dataset=digits", "trainer.max_steps=60", "trainer.checkpoint.every=20", "trainer.log_every=20")


def make_run(root: Path, *overrides: str) -> Path:
    """Train one run under `root` (the real config, composed as ``python -m ndt.run`` would) and return its directory."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"paths.results_dir={root / 'results'}",
                f"paths.data_dir={root / 'data'}",
                *overrides,
            ],
        )
    record = run_experiment(cfg)
    assert record["status"] == "complete", record.get("error")
    return run_dir_for(cfg)


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("mlp"), "arch=mlp_narrow", *SHORT)


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Measured every 2 steps: 30 samples, enough for the study detector to flag the early rise.
    return make_run(
        tmp_path_factory.mktemp("cnn"), "arch=cnn_shallow", "tracker.sampling_frequency=2", *SHORT
    )


def assert_same_state(state: TrainingState, payload: dict[str, object]) -> None:
    """Every tensor of the model and the optimizer, and the data position, equal the checkpoint's exactly."""
    model = payload["model"]
    assert isinstance(model, dict)
    replayed = state.model.state_dict()
    assert replayed.keys() == model.keys()
    for name, tensor in model.items():
        assert torch.equal(replayed[name], tensor), name
    opt_ref, opt = payload["optimizer"], state.optimizer.state_dict()
    assert isinstance(opt_ref, dict)
    for pid, slots in opt_ref["state"].items():
        for key, tensor in slots.items():
            assert torch.equal(opt["state"][pid][key], tensor), (pid, key)
    assert state.sampler.state_dict() == payload["sampler"]


# -- replay ----------------------------------------------------------------------------------------


def test_replay_from_an_earlier_checkpoint_equals_the_checkpoint(mlp_run: Path, tmp_path: Path) -> None:
    # A copy of the run without step_000040.pt: restore_at(40) must replay steps 20..39 from step_000020.pt.
    copy = tmp_path / mlp_run.name
    shutil.copytree(mlp_run, copy, ignore=shutil.ignore_patterns("step_000040.pt"))
    assert not checkpoint_path(copy, 40).exists() and checkpoint_path(copy, 20).exists()
    state = restore_at(copy, 40)
    assert_same_state(state, load_checkpoint(checkpoint_path(mlp_run, 40)))


@pytest.mark.slow
def test_replay_between_checkpoints_equals_an_uninterrupted_run(mlp_run: Path, tmp_path: Path) -> None:
    # The same experiment stopped after 30 steps: its last checkpoint is what an uninterrupted run had then.
    # (A separate sweep_name: run directories are named by arch, dataset and seed only.)
    stopped = make_run(tmp_path, "arch=mlp_narrow", "sweep_name=stopped", *SHORT[:1], "trainer.max_steps=30")
    state = restore_at(mlp_run, 30)  # checkpoint 20, then 10 replayed steps
    assert_same_state(state, load_checkpoint(checkpoint_path(stopped, 30)))


def test_replayed_probe_reproduces_the_recorded_metrics_and_known_answers(mlp_run: Path) -> None:
    # The measurement at step 40 was taken after 41 optimizer steps: the replayed model at 41 steps
    # must give the very activations the tracker measured.
    state = restore_at(mlp_run, 41)
    assert state.probe is not None
    acts, logits = capture_probe(state.model, state.probe, None, "token_mean")
    assert list(acts) == ["hidden.0", "hidden.1", "hidden.2", "hidden.3", "fc"]
    assert logits.shape == (160, 10)
    recorded = read_metrics(mlp_run / "metrics").query("step == 40").set_index("layer")
    rng = np.random.default_rng(0)
    for name, a in acts.items():
        x = a.astype(np.float64)
        s = np.linalg.svd(x, compute_uv=False)
        pr = s.sum() ** 2 / (s**2).sum()  # the participation ratio, by its definition
        # the tracker solves the Gram matrix: its small singular values carry ~sqrt(eps) relative error
        assert pr == pytest.approx(recorded.at[name, "participation_ratio"], rel=1e-6), name
        # CKA: 1 with itself (and under a rotation and scaling), low with an unrelated random matrix.
        q, _ = np.linalg.qr(rng.normal(size=(x.shape[1], x.shape[1])))
        assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
        assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-9)
        assert linear_cka(x, rng.normal(size=(len(x), 8))) < 0.2, name
        # PCA against numpy's SVD of the centred matrix.
        centred = x - x.mean(axis=0)
        _, sv, vt = np.linalg.svd(centred, full_matrices=False)
        got = pca(x)
        np.testing.assert_allclose(got.singular_values, sv, rtol=1e-9, atol=1e-9 * sv[0])
        np.testing.assert_allclose(got.explained_variance_ratio, sv**2 / (sv**2).sum(), atol=1e-12)
        np.testing.assert_allclose(got.scores @ got.components + got.mean, x, atol=1e-9 * np.abs(x).max())
        separated = np.flatnonzero(np.diff(sv[:4]) < -1e-3 * sv[0])  # leading directions with a gap below
        for i in separated:
            assert abs(got.components[i] @ vt[i]) == pytest.approx(1.0, abs=1e-8)  # equal up to sign


def test_a_run_without_probe_is_replayed_before_the_update_of_its_row(tmp_path: Path) -> None:
    # probe_size=0: the row of step s measured step s's training forward, i.e. the weights after s
    # optimizer steps (before update s). Replaying s steps and capturing that forward gives the row.
    run = make_run(tmp_path, "arch=mlp_narrow", "tracker.probe_size=0", *SHORT)
    recorded = read_metrics(run / "metrics").query("step == 40").set_index("layer")

    def training_forward_pr(steps_done: int) -> dict[str, float]:
        state = restore_at(run, steps_done)
        with ActivationCapture(state.model, grad_enabled_only=True) as cap:
            training_step(state)  # its forward is the one the tracker measured
        out = {}
        for name, a in cap.activations.items():
            s = np.linalg.svd(a.double().numpy(), compute_uv=False)
            out[name] = s.sum() ** 2 / (s**2).sum()  # the participation ratio, by its definition
        return out

    for name, pr in training_forward_pr(40).items():
        assert pr == pytest.approx(recorded.at[name, "participation_ratio"], rel=1e-6), name
    after_update = training_forward_pr(41)  # the other reading of "step 40" does not reproduce it
    assert any(abs(pr / recorded.at[n, "participation_ratio"] - 1) > 1e-4 for n, pr in after_update.items())
    result = investigate(run, InvestigateOptions(step=40, out=tmp_path / "o"))
    s = result.summary
    assert (s["moments"]["before"]["steps_done"], s["moments"]["after"]["steps_done"]) == (35, 40)
    assert s["replay"]["check"]["ok"] and s["replay"]["check"]["n_values"] == 2 * 5 * 6  # 2 steps, 5 layers


@pytest.mark.slow
@pytest.mark.parametrize(
    "measured", [("tracker.probe_size=160",), ("tracker.probe_size=0", "trainer.batch_size=200")]
)
def test_replay_check_recomputes_estimated_layers_with_the_estimator(
    tmp_path: Path, measured: tuple[str, ...]
) -> None:
    # mlp_wide (256, 256, 128, 128) with exact_max_size=100, measured on the 160-example probe or on
    # training batches of 200: its hidden layers (min(n, k) = 128 to 200) are estimated matrix-free,
    # about 1% from their exact values. The replay check must compare like with like (the same seeded
    # estimator), or a faithful replay reads as "did not rebuild the model".
    run = make_run(tmp_path, "arch=mlp_wide", "tracker.exact_max_size=100", *measured, *SHORT)
    result = investigate(run, InvestigateOptions(step=40, out=tmp_path / "o"))
    check = result.summary["replay"]["check"]
    assert check["ok"], check
    assert check["n_values"] == 2 * 5 * 6  # 2 steps x 5 layers x 6 metrics


# -- moments (pure) ----------------------------------------------------------------------------------


def two_steps_series() -> tuple[np.ndarray, np.ndarray]:
    """80 measurements every 5 steps: a rise of 2.5 at index 20 (step 100), one of 3 at index 55 (step 275)."""
    steps = np.arange(80) * 5
    values = np.where(np.arange(80) >= 20, 2.5, 0.0) + np.where(np.arange(80) >= 55, 3.0, 0.0)
    return steps, values


def test_jumps_are_ranked_by_magnitude_and_bracketed_by_their_neighbours() -> None:
    steps, values = two_steps_series()
    jumps = detect_jumps(values, steps)
    big, small = rank_events(jumps)
    assert big.start_step > small.start_step and big.peak_magnitude > small.peak_magnitude
    moments, _ = choose_moments(steps, values, max_steps=400, jump=1, detector="study")
    # before = the measurement before the first flagged one, after = the one after the last flagged one
    assert (moments.before, moments.after) == (big.start_step - 5, big.end_step + 5)
    assert moments.before < 275 <= moments.after  # the rise happens between steps 270 and 275
    assert moments.steps_done == (moments.before + 1, moments.after + 1)
    second, _ = choose_moments(steps, values, max_steps=400, jump=2, detector="study")
    assert (second.before, second.after) == (small.start_step - 5, small.end_step + 5)
    assert second.before < 100 <= second.after
    assert second.label == f"{second.before}-{second.after}"
    with pytest.raises(InvestigationError, match=r"jump=3 does not exist: .* has 2 jump event"):
        choose_moments(steps, values, max_steps=400, jump=3, detector="study")


def test_step_rounds_to_a_measured_step_and_is_compared_with_the_one_before() -> None:
    steps = np.arange(0, 100, 10)
    values = np.zeros(10)
    pick = choose_moments
    assert (m := pick(steps, values, max_steps=100, step=40)[0]).before == 30 and m.after == 40
    assert (m := pick(steps, values, max_steps=100, step=43)[0]).before == 30 and m.after == 40
    assert (m := pick(steps, values, max_steps=100, step=15)[0]).before == 0 and m.after == 10  # tie: earlier
    assert (m := pick(steps, values, max_steps=100, step=99)[0]).after == 90 and m.kind == "step"
    with pytest.raises(InvestigationError, match="outside the run"):
        pick(steps, values, max_steps=100, step=100)
    with pytest.raises(InvestigationError, match="outside the run"):
        pick(steps, values, max_steps=100, step=-1)
    with pytest.raises(InvestigationError, match="first measurement"):
        pick(steps, values, max_steps=100, step=4)


def test_a_series_without_jumps_says_so_and_suggests_a_step() -> None:
    steps = np.arange(0, 100, 5)
    with pytest.raises(InvestigationError, match=r"no jump .* step=N"):
        choose_moments(steps, np.zeros(20), max_steps=100)


# -- options -------------------------------------------------------------------------------------------


def test_options_parse_typed_key_values() -> None:
    run, opts = parse_options(["runs/x", "jump=2", "layers=hidden.0,fc", "metric=stable_rank", "out=o"])
    assert run == Path("runs/x") and opts.jump == 2 and opts.jump_rank == 2
    assert opts.layers == ("hidden.0", "fc") and opts.metric == "stable_rank" and opts.out == Path("o")
    assert parse_options(["r", "step=400"])[1].jump_rank is None
    causal = parse_options(["r", "causal=false", "control=no", "k=3", "draws=50", "layer=fc"])[1]
    assert (causal.causal, causal.control, causal.k, causal.draws, causal.layer) == (
        False,
        False,
        3,
        50,
        "fc",
    )
    assert parse_options(["r"])[1] == InvestigateOptions()
    for bad, message in (
        (["r", "jump=two"], "expected an integer"),
        (["r", "jmp=2"], "unknown option 'jmp'"),
        (["r", "jump=1", "step=5"], "not both"),
        (["r", "jump=0"], "ranked from 1"),
        (["r", "detector=fancy"], "choose one of study, robust"),
        (["r", "r2"], "one run directory"),
        (["r", "top=1", "top=2"], "given twice"),
        (["r", "causal=maybe"], "causal=maybe: expected true or false"),
        (["r", "draws=1"], "at least 2 random draws"),
        (["r", "k=0"], "at least one direction"),
    ):
        with pytest.raises(InvestigationError, match=message):
            parse_options(bad)


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m ndt.investigate RUN_DIR")
    assert all(f"{key}=" in out for key in ("jump", "step", "layers", "metric", "detector", "device", "out"))


# -- errors --------------------------------------------------------------------------------------------


def test_clear_errors(mlp_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    legacy = tmp_path / "legacy"  # a run record without the resolved config (e.g. an imported study result)
    legacy.mkdir()
    (legacy / "run.json").write_text(json.dumps({"status": "complete", "arch": "mlp_narrow"}))
    cases = [
        ([str(tmp_path)], "is not an ndt run directory"),
        ([str(legacy)], "not trained by python -m ndt.run .* cannot be replayed"),
        ([str(mlp_run), "step=60"], r"step=60 is outside the run: its training steps are 0\.\.59"),
        ([str(mlp_run), "step=2"], "first measurement"),
        ([str(mlp_run)], r"no jump .* step=N"),  # this short run's series only falls: no (upward) jump
        ([str(mlp_run), "jump=2"], r"no jump .* step=N"),
        ([str(mlp_run), "step=30", "layers=hidden.0,nope"], "measured layers are hidden.0,hidden.1"),
        ([str(mlp_run), "metric=loss"], "unknown metric 'loss'"),
        ([str(mlp_run), "layer=nope"], "layer=nope was not measured in .*; measured: hidden.0, hidden.1"),
        ([str(mlp_run), "step=30", "device=gpu"], "device=gpu is not a device"),
    ]
    if not torch.cuda.is_available():
        cases.append(([str(mlp_run), "step=30", "device=cuda"], "no CUDA device is visible"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.splitlines()) <= 2, err  # a message, no traceback
        assert re.search(message, err), (message, err)


def test_a_step_with_chosen_layers(mlp_run: Path, tmp_path: Path) -> None:
    result = investigate(mlp_run, InvestigateOptions(step=42, layers=("hidden.0", "fc"), out=tmp_path / "o"))
    s = result.summary
    assert result.out_dir == tmp_path / "o" and result.report.is_file()
    assert s["selection"]["kind"] == "step" and s["event"] is None
    assert (s["moments"]["before"]["step"], s["moments"]["after"]["step"]) == (35, 40)  # 42 rounds to 40
    assert (s["moments"]["before"]["steps_done"], s["moments"]["after"]["steps_done"]) == (36, 41)
    assert sorted(r["layer"] for r in s["layers"]) == ["fc", "hidden.0"]
    assert (
        s["replay"]["check"]["ok"] and s["replay"]["checkpoint"] == 20 and s["replay"]["replayed_steps"] == 21
    )
    # an MLP on images: saliency, no Grad-CAM or attention
    assert {f["name"] for f in s["figures"]} == {"series", "change", "pca", "spectrum", "saliency", "causal"}


# -- end to end -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_command_writes_a_self_contained_report_with_the_numbers(
    cnn_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(cnn_run), "jump=1"]) == 0, capsys.readouterr().err
    out_dir = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("report: ")).parent
    assert out_dir.parent == (cnn_run / "investigate").resolve()
    summary = json.loads((out_dir / "summary.json").read_text())
    assert {
        "run",
        "selection",
        "event",
        "events",
        "moments",
        "replay",
        "probe",
        "layers",
        "most_changed",
        "findings",
        "figures",
        "timings",
    } <= set(summary)
    event, moments = summary["event"], summary["moments"]
    assert summary["selection"]["jump"] == 1 and event["rank"] == 1
    # rank 1: the largest |peak magnitude| (a fall ranks by its size, `ndt.detect.rank_events`)
    assert abs(event["peak_magnitude"]) == max(abs(e["peak_magnitude"]) for e in summary["events"])
    assert out_dir.name == f"{moments['before']['step']}-{moments['after']['step']}"
    assert moments["before"]["step"] < event["start_step"] or moments["before"]["step"] == 0
    assert moments["after"]["step"] > event["end_step"]
    assert summary["replay"]["check"]["ok"]  # the replayed models are the ones the tracker measured
    layers = summary["layers"]
    assert [r["layer"] for r in sorted(layers, key=lambda r: r["layer_order"])] == ["conv.0", "conv.1", "fc"]
    changes = [r["change"] for r in layers]
    assert changes == sorted(changes, reverse=True)
    assert all(0.0 <= r["cka"] <= 1.0 + 1e-12 and r["n_angles"] >= 1 for r in layers)
    assert {f["name"] for f in summary["figures"]} == {
        "series",
        "change",
        "pca",
        "spectrum",
        "gradcam",
        "saliency",
        "feature_maps",
        "causal",
    }
    causal = summary["causal"]  # the causal tests: one verdict per layer, event and control
    assert [r["layer"] for r in causal["layers"]] == ["conv.0", "conv.1", "fc"]
    assert all(r["verdict"].split(":")[0] in ("effect", "no effect") for r in causal["layers"])
    if causal["control"] is not None:  # a stretch as long, overlapping no event
        assert causal["control"]["after"] - causal["control"]["before"] >= 1
    page = (out_dir / "report.html").read_text()
    assert "Does the change matter?" in page
    assert page.count('src="data:image/png;base64,') == len(summary["figures"])
    assert "http://" not in page and "https://" not in page and "<script" not in page  # nothing to fetch


@pytest.mark.slow
def test_attribution_maps_match_the_input(cnn_run: Path) -> None:
    state = restore_at(cnn_run, 30)
    assert state.probe is not None
    x = state.probe[:4]
    vis = FeatureVisualizer(state.model)
    cam = vis.grad_cam(x, state.test_y[:4])
    assert cam.shape == (4, *x.shape[-2:]) and cam.min() >= 0.0 and cam.max() <= 1.0
    assert vis.saliency(x, state.test_y[:4]).shape == tuple(x.shape)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(mlp_run: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip(
            "chromium is not installed (Debian: apt-get install chromium); the report is not rendered"
        )
    result = investigate(mlp_run, InvestigateOptions(step=30, out=tmp_path / "report"))
    png = tmp_path / "r.png"
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",  # needed as root in containers
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={png}",
        "--window-size=1200,2000",
        result.report.resolve().as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert png.is_file(), "chromium wrote no screenshot"
    from matplotlib.image import imread

    pixels = imread(png)
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels[..., :3].std() > 0.05  # not a blank page: text, tables and figures


def test_progress_log_says_how_far_and_how_long_is_left(caplog: pytest.LogCaptureFixture) -> None:
    """A fake clock: 60 s per item. After 2 of 8 items (120 s), 6 are left: 6 x 60 s = 6.0 min."""
    from ndt.report import investigation

    clock = iter([0.0, 120.0, 150.0])
    report = investigation._progress_log("causal tests (event)", every_s=60.0, clock=lambda: next(clock))
    with caplog.at_level("INFO", logger="ndt.investigate"):
        report(2, 8)  # at 120 s: logged
        report(3, 8)  # at 150 s: 30 s after the last line, quiet
    assert [r.getMessage() for r in caplog.records] == [
        "causal tests (event): 2 of 8 forwards, 2.0 min so far, about 6.0 min left"
    ]


def test_a_layer_investigation_names_its_layer_in_command_directory_and_report() -> None:
    # jump=2 of layer fc's own series: the command must reproduce it (layer=fc), the directory must
    # not be the layer-mean report's, and the page must not call the series the layer mean.
    from ndt.report.html import _series_of
    from ndt.report.investigation import _command, report_dir_name
    from ndt.report.moments import Moments

    chosen = Moments(before=40, after=60, kind="jump", n_events=3, note="", rank=2)
    opts = InvestigateOptions(jump=2, layer="fc", metric="participation_ratio", detector="changepoint")
    mean = InvestigateOptions(jump=2, metric="participation_ratio", detector="changepoint")
    assert _command(Path("run"), opts, chosen) == (
        "python -m ndt.investigate run jump=2 metric=participation_ratio detector=changepoint layer=fc"
    )
    assert "layer=" not in _command(Path("run"), mean, chosen)
    assert (report_dir_name(chosen, opts), report_dir_name(chosen, mean)) == ("40-60.fc", "40-60")
    assert _series_of({"layer": "fc"}) == "layer fc"
    assert _series_of({"layer": None}) == _series_of({}) == "layer-mean"


def test_the_report_says_what_step_s_means_for_the_run() -> None:
    # With a probe, measurement step 40 holds the weights after 41 optimizer steps; without one (the
    # training forward of step 40), after 40 (ndt.measure.tracker.steps_done_at).
    from ndt.report.html import _step_meaning

    assert "after s + 1 optimizer steps" in _step_meaning({"after": {"step": 40, "steps_done": 41}})
    assert "after s optimizer steps" in _step_meaning({"after": {"step": 40, "steps_done": 40}})
