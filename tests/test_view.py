"""`ndt.view`: the data behind the page (known answers), the server's refusals, and the page in headless Chromium.

The sweep is written here with the real writers: metric values follow formulas of (step, layer), so the
expected heatmaps, means and statuses are computed by hand. One run is written by a background process
while the page is open; the browser tests drive Debian's Chromium through Playwright (skipped, with
the reason, when either is missing; CI installs both).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import multiprocessing
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from ndt.detect import JumpDetector, JumpEvent, Jumps, get_detector
from ndt.running.status import sweep_status
from ndt.storage.layout import DONE_MARKER, HEARTBEAT, METRICS_DIR, write_run_json
from ndt.storage.parquet import MetricsWriter
from ndt.storage.schema import METRIC_COLUMNS
from ndt.view.__main__ import main as view_main
from ndt.view.data import (
    ReadCounters,
    Results,
    RunRows,
    detect_events,
    find_reports,
    looks_like_sweep,
    seed_band,
)
from ndt.view.server import RefusedPath, ViewServer, check_request_path, resolve_file

N_LAYERS = 3
MAX_STEPS = 200  # planned optimizer steps of every run; one measurement every 5 steps (40 in all)
EVERY = 5
JUMP_AT = 100  # participation_ratio rises by 5 in every layer from this step on


def pr(step: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """participation_ratio of (step, layer): 10 (layer + 1), plus 5 from step JUMP_AT."""
    return 10.0 * (layer + 1) + 5.0 * (step >= JUMP_AT)


def sr(step: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """stable_rank of (step, layer): 1 + layer + step / 1000."""
    return 1.0 + layer + step / 1000.0


def rows(run: str, steps: np.ndarray) -> dict[str, Any]:
    """Schema rows of `run` at `steps` x N_LAYERS layers, values by the formulas above."""
    arch, dataset, seed = run.split("__")
    step = np.repeat(steps, N_LAYERS).astype(np.int64)
    layer = np.tile(np.arange(N_LAYERS), steps.size)
    metrics = {m: np.full(step.size, 2.0) for m in METRIC_COLUMNS}
    # The seed shifts participation_ratio by 1 per seed: the band over seeds s0, s1 is [pr, pr + 1].
    metrics["participation_ratio"], metrics["stable_rank"] = pr(step, layer) + int(seed[1:]), sr(step, layer)
    return {
        "run_id": run,
        "arch": arch,
        "dataset": dataset,
        "seed": int(seed[1:]),
        "step": step,
        "epoch": np.zeros(step.size, dtype=np.int32),
        "layer": np.array([f"hidden.{i}" for i in layer], dtype=object),
        "layer_index": layer.astype(np.int16),
        "n_samples": 16,
        "n_features": 8,
        "loss": 1.0 / (1.0 + step),
        "grad_norm": 2.0,
        **metrics,
        "wall_time": step / 10.0,
    }


def write_rows(run_dir: Path, run: str, step_blocks: list[np.ndarray]) -> None:
    """One Parquet part per block of steps."""
    writer = MetricsWriter(run_dir / METRICS_DIR, flush_every=10_000)
    for block in step_blocks:
        writer.append(rows(run, block), measurements=block.size)
        writer.flush()
    writer.close()


def record(run: str, status: str, **extra: Any) -> dict[str, Any]:
    arch, dataset, seed = run.split("__")
    return {
        "status": status,
        "arch": arch,
        "dataset": dataset,
        "seed": int(seed[1:]),
        "run_id": run,
        "config": {"trainer": {"max_steps": MAX_STEPS}, "tracker": {"sampling_frequency": EVERY}},
        **extra,
    }


ALL_STEPS = np.arange(0, MAX_STEPS, EVERY)
DONE = (
    "cnn_shallow__digits__s0",
    "mlp_narrow__digits__s0",
    "mlp_narrow__digits__s1",
)  # s1: not in multirun.yaml
FAILED = "cnn_shallow__mnist__s0"
RUNNING = "mlp_narrow__mnist__s0"
MISSING = ("transformer_shallow__digits__s0", "transformer_shallow__mnist__s0")
FAILED_ERROR = "FloatingPointError: loss is nan at step 40"


def write_sweep(sweep: Path) -> None:
    """Three done runs, one failed, and the multirun.yaml that also expects the running and two missing runs."""
    for run in DONE:
        write_rows(sweep / run, run, [ALL_STEPS[:20], ALL_STEPS[20:]])
        write_run_json(sweep / run, record(run, "complete", final_accuracy=0.9, family=None))
        (sweep / run / HEARTBEAT).write_text(f"{time.time():.0f}\n")
        (sweep / run / DONE_MARKER).write_text("complete\n")
    write_rows(sweep / FAILED, FAILED, [ALL_STEPS[:9]])
    write_run_json(
        sweep / FAILED,
        record(FAILED, "failed", error=f"{FAILED_ERROR}\nTraceback (most recent call last): ..."),
    )
    cfg = {
        "arch": {"name": "mlp_narrow"},
        "dataset": {"name": "digits"},
        "seed": 0,
        "hydra": {
            "sweeper": {
                "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                "params": {"arch": "mlp_narrow,cnn_shallow,transformer_shallow", "dataset": "digits,mnist"},
            },
            "overrides": {"task": []},
        },
    }
    OmegaConf.save(OmegaConf.create(cfg), sweep / "multirun.yaml")


def write_in_background(run_dir: Path, control: Path) -> None:
    """The run still training (run in a forked process): its record and heartbeat, one part of 10
    measurements, then one more part of 5 measurements each time the test creates ``go-<k>``; it
    stops when ``stop`` appears."""
    run = run_dir.name
    run_dir.mkdir(parents=True)
    write_run_json(run_dir, record(run, "running"))
    writer = MetricsWriter(run_dir / METRICS_DIR, flush_every=10_000)
    writer.append(rows(run, ALL_STEPS[:10]), measurements=10)
    writer.flush()
    (control / "ready").touch()
    k = 1
    while not (control / "stop").exists():
        (run_dir / HEARTBEAT).write_text(f"{time.time():.0f}\n")
        if (control / f"go-{k}").exists():
            writer.append(rows(run, ALL_STEPS[5 + 5 * k : 10 + 5 * k]), measurements=5)
            writer.flush()
            (control / f"wrote-{k}").touch()
            k += 1
        time.sleep(0.05)
    writer.close()


class EscapeDetector(JumpDetector):
    """The study's detector, which also calls the first three samples the escape from initialisation."""

    def detect(self, values: Any, steps: Any = None) -> Jumps:
        jumps = super().detect(values, steps)
        s = np.asarray(steps)
        if s.size < 3:
            return jumps
        escape = JumpEvent(0, 2, int(s[0]), int(s[2]), 1, int(s[1]), 0.0, 0.0, 3, 0.0, "init_escape")
        return dataclasses.replace(jumps, init_escape=(escape,))


def wait_for(path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s:.0f} s")
        time.sleep(0.05)


# ---- the data, without a browser ----------------------------------------------------------------


def test_run_rows_read_only_new_parts_and_freeze_when_done(tmp_path: Path) -> None:
    run = "mlp_narrow__digits__s0"
    write_rows(tmp_path / run, run, [ALL_STEPS[:4], ALL_STEPS[4:8]])
    counters = ReadCounters()
    store = RunRows(tmp_path / run, counters)
    assert store.refresh(done=False)
    assert (counters.parts_read, store.steps().tolist()) == (2, ALL_STEPS[:8].tolist())
    assert not store.refresh(done=False)  # nothing new: nothing read
    assert counters.parts_read == 2

    writer = MetricsWriter(tmp_path / run / METRICS_DIR, resume_after_step=int(ALL_STEPS[7]))
    writer.append(rows(run, ALL_STEPS[8:12]), measurements=4)
    writer.close()
    assert store.refresh(done=False)
    assert (counters.parts_read, counters.full_rereads) == (3, 0)  # the third part alone
    assert store.steps().tolist() == ALL_STEPS[:12].tolist()

    # A resume from step 10 rewrites part 1 (steps 20..35 are dropped) and removes part 2: start over.
    MetricsWriter(tmp_path / run / METRICS_DIR, resume_after_step=10).close()
    assert store.refresh(done=False)
    assert counters.full_rereads == 1
    assert store.steps().tolist() == [0, 5, 10]

    store.refresh(done=True)
    listings = counters.listings
    for _ in range(3):
        assert not store.refresh(done=True)
    assert counters.listings == listings  # a done run is not listed again


def test_matrix_mean_and_events_have_the_hand_computed_values(tmp_path: Path) -> None:
    run = "mlp_narrow__digits__s0"
    write_rows(tmp_path / run, run, [ALL_STEPS[:10], ALL_STEPS[10:]])
    store = RunRows(tmp_path / run, ReadCounters())
    store.refresh(done=True)
    steps, layers, matrix = store.matrix("stable_rank")
    assert steps.tolist() == ALL_STEPS.tolist()
    assert layers == ["hidden.0", "hidden.1", "hidden.2"]
    expected = np.array([[1.0 + layer + s / 1000 for s in ALL_STEPS] for layer in range(N_LAYERS)])
    np.testing.assert_allclose(matrix, expected)
    _, mean = store.mean_series("participation_ratio")
    # mean over layers of 10 (l + 1) = 20, plus 5 from step JUMP_AT
    np.testing.assert_allclose(mean, [20.0 + 5.0 * (s >= JUMP_AT) for s in ALL_STEPS])
    events, _ = store.events("participation_ratio", get_detector())
    jumps = get_detector().detect(np.array([20.0 + 5.0 * (s >= JUMP_AT) for s in ALL_STEPS]), ALL_STEPS)
    assert [(e["start_step"], e["end_step"]) for e in events] == [
        (e.start_step, e.end_step) for e in jumps.events
    ]
    assert events and all(e["start_step"] <= JUMP_AT <= e["end_step"] + EVERY for e in events)


def test_seed_band_hand_computed() -> None:
    steps, mean, low, high = seed_band(
        [np.array([0, 5, 10]), np.array([0, 5, 10, 15]), np.array([5, 10])],
        [np.array([1.0, 2.0, 3.0]), np.array([3.0, 4.0, np.nan, 9.0]), np.array([6.0, 9.0])],
    )
    assert steps.tolist() == [5, 10]
    np.testing.assert_allclose(mean, [4.0, 6.0])  # (2 + 4 + 6) / 3, (3 + 9) / 2 (NaN left out)
    np.testing.assert_allclose(low, [2.0, 3.0])
    np.testing.assert_allclose(high, [6.0, 9.0])


def test_grid_uses_ndt_status_and_finds_the_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "results" / "paper"
    write_sweep(sweep)
    (tmp_path / "results" / "tables").mkdir()  # not a sweep
    results = Results(tmp_path / "results")
    results.refresh(force=True)
    assert list(results.sweeps) == ["paper"] and not results.single
    grid = results.sweep("paper").grid()
    states = {r["name"]: r["state"] for t in grid["tiles"] for r in t["runs"]}
    assert states == {r.name: r.state for r in sweep_status(sweep).runs}  # the same logic as ndt.status
    assert states == {
        **dict.fromkeys(DONE, "done"),
        FAILED: "failed",
        RUNNING: "missing",  # not started yet in this test
        **dict.fromkeys(MISSING, "missing"),
    }
    tiles = {(t["arch"], t["dataset"]): t for t in grid["tiles"]}
    assert len(tiles) == 6 and grid["expected"] == 6
    assert [r["seed"] for r in tiles[("mlp_narrow", "digits")]["runs"]] == [0, 1]  # one tile, two seeds
    failed = tiles[("cnn_shallow", "mnist")]["runs"][0]
    assert failed["reason"] == FAILED_ERROR  # the first line of run.json's error
    assert failed["measurements"] == 9 and failed["progress"] == pytest.approx((40 + 1) / MAX_STEPS)
    done = tiles[("mlp_narrow", "digits")]["runs"][0]
    assert (done["family"], done["progress"], done["final_accuracy"]) == ("mlp", 1.0, 0.9)
    assert len(done["spark"]["steps"]) == ALL_STEPS.size and done["events"]
    assert tiles[("transformer_shallow", "digits")]["family"] == "transformer"  # from the registry
    assert looks_like_sweep(sweep) and not looks_like_sweep(tmp_path / "results")
    view = results.sweep("paper").run_view(MISSING[0], "stable_rank", results.root, sweep)
    assert (view["state"], view["steps"], view["matrix"], view["record"]) == ("missing", [], [], {})
    view = results.sweep("paper").run_view(FAILED, "stable_rank", results.root, sweep)
    assert view["steps"] == ALL_STEPS[:9].tolist() and view["record"]["error"].startswith(FAILED_ERROR)
    with pytest.raises(KeyError):
        results.sweep("paper").run_view("nope__digits__s0", "stable_rank", results.root, sweep)
    with pytest.raises(ValueError, match="unknown metric"):
        results.sweep("paper").grid("rank")


def test_reports_are_linked_and_commands_match_investigate(tmp_path: Path) -> None:
    from ndt.detect import DEFAULT_DETECTOR
    from ndt.report import investigation, moments

    sweep = tmp_path / "sweep"
    write_sweep(sweep)
    results = Results(sweep)
    results.refresh(force=True)
    view = results.sweep("sweep").run_view(
        "mlp_narrow__digits__s0", "participation_ratio", results.root, sweep
    )
    (event,) = view["events"]
    assert event["report"] is None
    assert event["command"] == (
        f"python -m ndt.investigate {sweep / 'mlp_narrow__digits__s0'} jump=1 metric=participation_ratio "
        f"detector={DEFAULT_DETECTOR}"
    )
    # The report ndt.investigate would write for that event, in its directory and with its summary keys.
    steps = ALL_STEPS
    jumps = get_detector().detect(20.0 + 5.0 * (steps >= JUMP_AT), steps)
    ranked = moments.rank_events(jumps)
    chosen = moments.moments_for_event(steps, ranked[0], 1, len(ranked))
    out = sweep / "mlp_narrow__digits__s0" / investigation.INVESTIGATE_DIR / chosen.label
    out.mkdir(parents=True)
    (out / investigation.REPORT_FILE).write_text("<html>report</html>")
    summary = {"selection": {"metric": "participation_ratio", "detector": DEFAULT_DETECTOR},
               "event": {"start_step": ranked[0].start_step, "end_step": ranked[0].end_step}}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary))
    # A report on one layer's own series over the same steps (ndt.investigate layer=hidden.0) is not a
    # report on the page's layer-mean event: it must not be linked.
    own = out.parent / f"{chosen.label}.hidden.0"
    own.mkdir()
    (own / investigation.REPORT_FILE).write_text("<html>one layer</html>")
    summary["selection"]["layer"] = "hidden.0"
    (own / "summary.json").write_text(json.dumps(summary))
    assert find_reports(sweep / "mlp_narrow__digits__s0") == {
        ("participation_ratio", DEFAULT_DETECTOR, ranked[0].start_step, ranked[0].end_step): chosen.label
    }
    results.refresh(force=True)
    view = results.sweep("sweep").run_view(
        "mlp_narrow__digits__s0", "participation_ratio", results.root, sweep
    )
    assert view["events"][0]["report"] == f"mlp_narrow__digits__s0/investigate/{chosen.label}/report.html"


def test_request_paths_outside_the_folder_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "results"
    (root / "paper").mkdir(parents=True)
    (root / "paper" / "a.txt").write_text("inside")
    (root / "paper" / "etc").symlink_to("/etc")
    assert check_request_path("/files/paper/a.txt?x=1") == "/files/paper/a.txt"
    for raw in ("/files/../../etc/passwd", "/../../etc/passwd", "/files/%2e%2e/%2E%2E/etc/passwd",
                "/files/paper/..%2f..%2fetc/passwd", "/files/a\\..\\b", "etc/passwd", "/files/a%00b"):  # fmt: skip
        with pytest.raises(RefusedPath):
            check_request_path(raw)
    resolved = root.resolve()
    assert resolve_file(resolved, "paper/a.txt").read_text() == "inside"
    for relative in ("/etc/passwd", "paper/etc/passwd", "../results/paper/a.txt"):
        with pytest.raises(RefusedPath):
            resolve_file(resolved, relative)
    with pytest.raises(FileNotFoundError):
        resolve_file(resolved, "paper/none.txt")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The test sweep, its background writer, and the view served over it on a free port."""
    sweep = tmp_path_factory.mktemp("view") / "paper"
    control = sweep.parent / "control"
    control.mkdir()
    sweep.mkdir()
    # Forked: a separate process that writes with the real MetricsWriter, without importing ndt again.
    writer = multiprocessing.get_context("fork").Process(
        target=write_in_background, args=(sweep / RUNNING, control), daemon=True
    )
    writer.start()
    try:
        write_sweep(sweep)
        # Whoever needs the running run waits for control/ready; the browser starts meanwhile.
        results = Results(sweep, detector=EscapeDetector(), min_interval_s=0.1)
        results.refresh(force=True)
        server = ViewServer(results, port=0, refresh_s=0.3).start()
        yield {"sweep": sweep, "control": control, "server": server, "url": server.url}
        server.stop()
    finally:
        (control / "stop").touch()
        writer.join(timeout=10)
        if writer.is_alive():
            writer.terminate()
            writer.join()


def get(url: str) -> tuple[int, bytes]:
    """Status and body of a GET (errors included)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_server_refuses_traversal_and_writes(served: dict[str, Any]) -> None:
    wait_for(served["control"] / "ready")
    host, port = served["server"].httpd.server_address[:2]
    for target in ("/files/../../etc/passwd", "/../../etc/passwd", "/files/%2e%2e/%2e%2e/etc/passwd",
                   "/files//etc/passwd", "/files/%2Fetc%2Fpasswd"):  # fmt: skip
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", target)  # sent as written: http.client does not normalise the path
        response = conn.getresponse()
        body = response.read()
        conn.close()
        assert response.status == 403, target
        assert b"root:" not in body
    status, body = get(served["url"] + f"files/{RUNNING}/run.json")
    assert status == 200 and json.loads(body)["status"] == "running"
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("POST", "/api/index", body=b"{}")
    assert conn.getresponse().status == 405
    conn.close()
    assert get(served["url"] + "api/run?sweep=paper&run=nope")[0] == 404


def test_cli_refuses_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert view_main([str(tmp_path / "nothing")]) == 2
    assert "no results folder" in capsys.readouterr().err


# ---- the page, in headless Chromium ----------------------------------------------------------------


@pytest.fixture(scope="module")
def page(served: dict[str, Any]) -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); the page is not tested")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        pg.on("pageerror", lambda err: errors.append(str(err)))
        wait_for(served["control"] / "ready")
        pg.goto(served["url"])
        pg.wait_for_selector("body[data-ready=grid]")
        yield pg
        browser.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


def tile(pg: Any, arch: str, dataset: str) -> Any:
    return pg.locator(f".tile[data-arch='{arch}'][data-dataset='{dataset}']")


def test_grid_shows_every_pair_with_its_status(page: Any) -> None:
    expected = {
        ("cnn_shallow", "digits"): "done",
        ("mlp_narrow", "digits"): "done",
        ("cnn_shallow", "mnist"): "failed",
        ("mlp_narrow", "mnist"): "running",
        ("transformer_shallow", "digits"): "missing",
        ("transformer_shallow", "mnist"): "missing",
    }
    found = page.eval_on_selector_all(
        ".tile", "els => els.map(e => [e.dataset.arch, e.dataset.dataset, e.dataset.state])"
    )
    assert {(a, d): s for a, d, s in found} == expected
    assert FAILED_ERROR in tile(page, "cnn_shallow", "mnist").inner_text()
    assert tile(page, "mlp_narrow", "digits").locator("svg.spark line.event").count() >= 1  # its jump
    seeds = tile(page, "mlp_narrow", "digits").locator("a.seed")
    assert seeds.evaluate_all("els => els.map(e => [e.dataset.run, e.dataset.state])") == [
        ["mlp_narrow__digits__s0", "done"],
        ["mlp_narrow__digits__s1", "done"],
    ]
    assert tile(page, "mlp_narrow", "digits").locator("svg.spark rect.escape").count() == 2  # one per seed
    counts = page.eval_on_selector_all(
        "#counts .count", "els => els.map(e => [e.dataset.state, e.innerText])"
    )
    assert dict((s, t.split()[0]) for s, t in counts) == {
        "done": "3",
        "running": "1",
        "failed": "1",
        "missing": "2",
    }
    page.select_option("#f-family", "cnn")
    assert sorted(page.eval_on_selector_all(".tile", "els => els.map(e => e.dataset.family)")) == [
        "cnn",
        "cnn",
    ]
    page.select_option("#f-family", "")
    assert page.locator(".tile").count() == 6


def test_a_new_part_appears_without_a_reload(page: Any, served: dict[str, Any]) -> None:
    running = tile(page, "mlp_narrow", "mnist")
    assert running.get_attribute("data-measurements") == "10"
    page.evaluate("window.__sameDocument = true")
    before = json.loads(get(served["url"] + "api/stats")[1])
    (served["control"] / "go-1").touch()
    wait_for(served["control"] / "wrote-1")
    page.wait_for_selector(
        ".tile[data-arch='mlp_narrow'][data-dataset='mnist'][data-measurements='15']", timeout=10_000
    )
    assert page.evaluate("window.__sameDocument") is True  # updated in place, not reloaded
    after = json.loads(get(served["url"] + "api/stats")[1])
    assert after["parts_read"] - before["parts_read"] == 1  # only the new part was read
    assert after["full_rereads"] == before["full_rereads"]

    # The run view of the same run follows too: its heatmap grows by the next part's 5 steps.
    page.click(f".tile a.seed[data-run='{RUNNING}']")
    page.wait_for_selector("#heatmap[data-metric=participation_ratio]", timeout=15_000)
    assert page.evaluate("document.getElementById('heatmap').data[0].x.length") == 15
    (served["control"] / "go-2").touch()
    page.wait_for_function("document.getElementById('heatmap').data[0].x.length === 20", timeout=10_000)
    assert page.evaluate("window.__sameDocument") is True
    page.goto(served["url"])
    page.wait_for_selector("body[data-ready=grid]")


def test_choosing_a_metric_redraws_the_heatmap(page: Any, served: dict[str, Any]) -> None:
    page.click(".tile[data-arch='mlp_narrow'][data-dataset='digits']")
    page.wait_for_selector("#heatmap[data-metric=participation_ratio]", timeout=15_000)
    z = page.evaluate("document.getElementById('heatmap').data[0].z")
    np.testing.assert_allclose(z, pr(ALL_STEPS[None, :], np.arange(N_LAYERS)[:, None]))
    assert (
        page.locator("#events .event-row[data-rank='1'] code.command")
        .inner_text()
        .endswith("jump=1 metric=participation_ratio detector=study")
    )
    shapes = page.evaluate("document.getElementById('lines').layout.shapes")
    escape = [sh for sh in shapes if sh["type"] == "rect" and "120,120,120" in sh["fillcolor"]]
    assert [(sh["x0"], sh["x1"]) for sh in escape] == [(0, 10)]  # the first three measurements, shaded
    page.select_option("#metric", "stable_rank")
    page.wait_for_selector("#heatmap[data-metric=stable_rank]", timeout=10_000)
    z = page.evaluate("document.getElementById('heatmap').data[0].z")
    np.testing.assert_allclose(z, sr(ALL_STEPS[None, :], np.arange(N_LAYERS)[:, None]))
    assert page.evaluate("document.getElementById('heatmap').data[0].y") == [
        "hidden.0",
        "hidden.1",
        "hidden.2",
    ]
    loss = page.evaluate("document.getElementById('loss').data[0].y")
    np.testing.assert_allclose(loss, 1.0 / (1.0 + ALL_STEPS))


def test_the_browser_cannot_fetch_outside_the_folder(page: Any, served: dict[str, Any]) -> None:
    statuses = page.evaluate(
        """async () => Promise.all(['/files/..%2f..%2fetc%2fpasswd', '/files/%2Fetc%2Fpasswd']
                                    .map(async u => (await fetch(u)).status))"""
    )
    assert statuses == [403, 403]
    # A browser resolves "../" (and "%2e%2e/") itself before sending: it then asks for /etc/passwd, which
    # is not a route of the view.
    response = page.goto(served["url"] + "files/../../etc/passwd")
    assert response.status == 404 and "root:" not in page.content()
    page.goto(served["url"])
    page.wait_for_selector("body[data-ready=grid]")


def test_compare_overlays_runs(page: Any, served: dict[str, Any]) -> None:
    page.goto(served["url"] + f"#/compare/paper?runs={DONE[0]},{DONE[1]},{FAILED}&metric=stable_rank")
    page.wait_for_selector("body[data-ready=compare]", timeout=15_000)
    names = page.evaluate("document.getElementById('compare-chart').data.map(t => t.name)")
    assert names == [DONE[0], DONE[1], FAILED]
    y = page.evaluate("document.getElementById('compare-chart').data[0].y")
    np.testing.assert_allclose(y, [1.0 + 1.0 + s / 1000 for s in ALL_STEPS])  # mean of layers 0, 1, 2
    page.goto(served["url"] + f"#/compare/paper?runs={DONE[1]},{DONE[2]}&metric=participation_ratio&band=1")
    page.wait_for_function(
        "document.getElementById('compare-chart')?.data?.some(t => (t.name || '').includes('mean of 2 seeds'))"
    )
    traces = page.evaluate("document.getElementById('compare-chart').data.map(t => [t.name ?? '', t.y])")
    mean = 20.0 + 5.0 * (ALL_STEPS >= JUMP_AT)  # seed 0's layer mean; seed 1's is 1 higher
    (high,) = [y for name, y in traces if name == ""]
    (low,) = [y for name, y in traces if "min–max" in name]
    (centre,) = [y for name, y in traces if "mean of 2 seeds" in name]
    np.testing.assert_allclose(low, mean)
    np.testing.assert_allclose(high, mean + 1)
    np.testing.assert_allclose(centre, mean + 0.5)
    page.goto(served["url"])
    page.wait_for_selector("body[data-ready=grid]")


def test_a_jump_over_a_still_background_shows_an_infinite_z() -> None:
    """A noiseless step (the fixture's own series: 10, then 15 from JUMP_AT): every other piece of the
    fit has speed 0, so the background speed is 0 and the jump's z is +inf. JSON has no infinity and
    null would read as missing: the page and the report show the symbol."""
    from ndt.report.html import _num
    from ndt.view.data import event_dict

    steps = np.arange(0, MAX_STEPS, EVERY)
    jumps = get_detector("changepoint").detect(pr(steps, np.zeros_like(steps)), steps)
    assert [e.peak_step for e in jumps.events] == [JUMP_AT] and jumps.events[0].peak_z == float("inf")
    assert event_dict(jumps.events[0])["peak_z"] == "∞"
    assert json.loads(json.dumps(event_dict(jumps.events[0])))["peak_z"] == "∞"
    assert (_num(float("inf"), ".2f"), _num(float("nan")), _num(None), _num(2.5, ".2f")) == (
        "∞",
        "–",
        "–",
        "2.50",
    )


def test_view_ranks_a_fall_as_investigate_does() -> None:
    # A rise of 2 at step 600 and a fall of 6 at step 1400 (noise sd 0.05): the default detector gives
    # the fall a negative peak magnitude (its speed). The view's rank 1, and so its `jump=1` command,
    # must be the event `ndt.investigate jump=1` opens: the fall, the larger change.
    from ndt.report import moments

    steps = np.arange(0, 2000, 5)
    noise = np.random.default_rng(0).normal(0.0, 0.05, steps.size)
    values = 20.0 + 2.0 * (steps >= 600) - 6.0 * (steps >= 1400) + noise
    events, _ = detect_events(get_detector(), steps, values)
    by_rank = sorted(events, key=lambda e: e["rank"])
    assert [e["size"] < 0 for e in by_rank] == [True, False]
    ranked = moments.rank_events(get_detector().detect(values, steps))
    assert [e["start_step"] for e in by_rank] == [e.start_step for e in ranked]


def test_view_layer_mean_expects_every_distinct_layer_like_the_tables(tmp_path: Path) -> None:
    # Two layers; step 0 and 5 hold one row per layer, step 10 holds each layer twice (a duplicated
    # part, e.g. from a legacy import). The tables' rule (a step holds every distinct layer) keeps all
    # three steps; counting rows against the busiest step kept only step 10.
    from ndt.aggregate.summaries import layer_mean_series as tables_mean

    steps = np.array([0, 0, 5, 5, 10, 10, 10, 10])
    layers = np.array(["a", "b"] * 4)
    pr = np.array([1.0, 3.0, 2.0, 4.0, 3.0, 5.0, 3.0, 5.0])
    store = RunRows(tmp_path, ReadCounters())
    store._frames = [
        pd.DataFrame({"step": steps, "layer": layers, "layer_index": [0, 1] * 4, "participation_ratio": pr})
    ]
    got_steps, got_means = store.mean_series("participation_ratio")
    want_steps, want_means = tables_mean(steps, pr, layers)
    assert got_steps.tolist() == want_steps.tolist() == [0, 5, 10]
    assert got_means.tolist() == want_means.tolist() == [2.0, 3.0, 4.0]
