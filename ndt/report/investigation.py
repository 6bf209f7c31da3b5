"""Investigate one moment of a run: replay the model just before and just after it, compare the two.

`investigate(run_dir, options)` is the whole job behind ``python -m ndt.investigate``. It reads the run
directory into a `RunSource` and calls `investigate_source`, which any other producer of runs with a
deterministic replay calls too (the validity benchmark's cases: ``python -m ndt.validate --investigate``),
so that every report comes from the same code:

1. read the run (run.json, Parquet) and pick the two measurement steps (`ndt.report.moments`);
2. rebuild the model at both with `ndt.running.train.restore_at` (nearest checkpoint, then deterministic
   replay of the run's own training step) and continue the replay from *before* to *after*;
3. capture the probe's activations at both (the tracker's probe, layers and reductions), check them
   against the recorded metrics, and compare them with `ActivationAnalyzer` (CKA, principal angles,
   metric changes, PCA, spectra). A run without a probe (``tracker.probe_size=0``) measured the training
   forward of step s, before its update: the replay rebuilds the weights after s steps, captures that
   very forward for the check, and compares the two moments on the first `FALLBACK_PROBE` test examples;
4. draw the figures (`ndt.report.figures`, attribution maps from `FeatureVisualizer`) and write
   ``report.html`` (self-contained) and ``summary.json`` (`ndt.report.html` lists the keys).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

import ndt
from ndt.aggregate.summaries import check_metric, layer_mean_series
from ndt.analysis.analyzer import ActivationAnalyzer, LayerAnalysis
from ndt.analysis.causal import Z_SIGNIFICANT, causal_forwards, causal_table, layer_verdict, localise
from ndt.analysis.comparison import Comparison, linear_cka, metric_frame, principal_angles
from ndt.analysis.visualize import FeatureVisualizer
from ndt.data.spec import IGNORE_INDEX
from ndt.detect import DEFAULT_DETECTOR, JumpDetector, Jumps, RobustJumpDetector, get_detector
from ndt.measure.capture import ActivationCapture
from ndt.measure.spectrum import compute_metrics
from ndt.models import describe
from ndt.models.objective import correct_and_count, task_loss
from ndt.models.pooling import PAD_ID
from ndt.report import figures
from ndt.report.html import FigureBlock, render_report
from ndt.report.moments import Moments, choose_moments, rank_events
from ndt.report.options import InvestigateOptions, InvestigationError
from ndt.running.checkpoint import list_checkpoints
from ndt.running.train import resolve_device, restore_at, training_step
from ndt.storage.layout import METRICS_DIR, read_run_json
from ndt.storage.parquet import read_metrics
from ndt.storage.schema import METRIC_COLUMNS

log = logging.getLogger("ndt.investigate")

#: Probe size when the run measured its training batches (tracker.probe_size 0): the study's 160.
FALLBACK_PROBE = 160
#: Recomputed and recorded metrics agreeing to this relative difference confirm the replay.
REPLAY_TOLERANCE = 1e-4
#: Families whose report shows Grad-CAM and conv feature maps (conv layers with spatial maps).
CONV_FAMILIES = ("cnn", "resnet")
#: Families whose report shows per-head attention maps (``nn.MultiheadAttention`` layers).
ATTENTION_FAMILIES = ("transformer", "vit", "lm")


def detector_threshold(name: str | None) -> float | None:
    """The z threshold of a z-scoring detector's default settings (drawn on the series figure).

    Only the study's and the robust detector flag samples by a z threshold; the changepoint detector's
    ``threshold`` is a penalty factor, not a line on its speed ratio, so none is drawn for it.
    """
    detector = get_detector(name)
    return float(detector.threshold) if isinstance(detector, JumpDetector | RobustJumpDetector) else None


#: Widest layer (features) the causal tests analyse: their added directions come from F x F covariances
#: (F^3 eigensolves, ~1 min at a language model's 5,002 logits here); wider layers (an LM's output
#: layer) are listed as skipped in summary.json's ``causal.skipped_layers``.
CAUSAL_MAX_FEATURES = 4096
#: Largest principal subspace compared per layer (`dominant_angles`).
ANGLES_MAX_K = 10
#: Config keys a replay needs (`ndt.running.train.build_training` reads the rest with them).
REPLAY_KEYS = (
    "arch.name",
    "dataset.name",
    "seed",
    "trainer.max_steps",
    "trainer.batch_size",
    "tracker.sampling_frequency",
    "tracker.probe_size",
)
#: How a run's tracker turned outputs into matrices, for runs recorded before these keys existed: the
#: study's choices (spatial means, pre-activation, PAD averaged in).
LEGACY_CAPTURE = {
    "conv_reduction": "spatial_mean",
    "hook_point": "pre",
    "mask_padding": False,
    "max_rows": 4096,
}
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
INVESTIGATE_DIR = "investigate"


@dataclass(frozen=True)
class Replay:
    """The model at both moments, and how it was obtained.

    Attributes:
        before, after: the network after `steps_done` (before, after) optimizer steps, in eval mode.
        probe: (n, ...) the run's probe inputs, on the replay device.
        labels: (n,) their classes, or (n, S) next-token targets for a language model.
        checkpoint: optimizer steps of the checkpoint the replay started from (0: from initialisation).
        replayed: optimizer steps replayed (from the checkpoint to *after*).
        seconds: wall time of the replay.
        measured: for a run without a probe, the training forwards the tracker measured, as captured
            by the replay: ({layer: (n, k)} at before, at after); None for a probe run.
    """

    before: nn.Module
    after: nn.Module
    probe: torch.Tensor
    labels: torch.Tensor
    checkpoint: int
    replayed: int
    seconds: float
    measured: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None


def replay_pair(
    run_dir: Path,
    steps_done: tuple[int, int],
    device: str | torch.device,
    *,
    capture: dict[str, Any] | None = None,
    layers: Sequence[str] | None = None,
) -> Replay:
    """Restore a run after `steps_done[0]` optimizer steps, then continue to `steps_done[1]`.

    The continuation runs the same `training_step` that `restore_at` replays with, so the after-state is
    the one `restore_at(run_dir, steps_done[1])` gives (bit-identical on CPU) without loading the data and
    replaying from a checkpoint a second time. For a run without a probe, the training forwards of steps
    a and b (the ones its rows measured) are captured on the way; step b's update is then discarded.

    Args:
        run_dir: the run directory.
        steps_done: (a, b) optimizer steps, a < b.
        device: where to replay ("cpu" is bit-exact; see `ndt.running.train.resolve_device` for "auto").
        capture: `ActivationCapture` keywords of the run's tracker (`capture_options`); default: the
            library's.
        layers: module names to capture, or None for the tracker's default selection.
    """
    a, b = steps_done
    t0 = time.perf_counter()
    state = restore_at(run_dir, a, resolve_device(device) if isinstance(device, str) else device)
    before = copy.deepcopy(state.model).eval()
    measure = state.probe is None

    def captured_step() -> dict[str, np.ndarray]:
        # The tracker's view of a training step: its forward, grad on, train mode, same RNG draws.
        with ActivationCapture(state.model, layers, grad_enabled_only=True, **(capture or {})) as cap:
            training_step(state)
        # In the dtype the tracker measured (float64 stays, anything else float32, as the estimator
        # casts): an estimated layer's seeded draws depend on it; the exact path is the same either way.
        acts = {n: cap.activations[n] for n in cap.layer_names if n in cap.activations}
        return {n: (t if t.dtype == torch.float64 else t.float()).cpu().numpy() for n, t in acts.items()}

    # Nothing above touched torch's RNG after restore_at returned (deepcopy draws no random numbers), so
    # the dropout masks of the continued steps are the ones the run drew.
    measured_b: dict[str, np.ndarray] = {}
    for i in range(a, b):
        if measure and i == a:
            measured_b = captured_step()
        else:
            training_step(state)
    after = state.model
    measured = None
    if measure:
        after = copy.deepcopy(state.model)
        measured = (measured_b, captured_step())  # step b's forward; its update is not kept
    after.eval()
    probe = state.probe if state.probe is not None else state.test_x[:FALLBACK_PROBE]
    checkpoint = max((s for s, _ in list_checkpoints(run_dir) if s <= a), default=0)
    return Replay(
        before=before,
        after=after,
        probe=probe,
        labels=state.test_y[: len(probe)],
        checkpoint=checkpoint,
        replayed=b - checkpoint,
        seconds=time.perf_counter() - t0,
        measured=measured,
    )


def capture_options(cfg: DictConfig) -> dict[str, Any]:
    """`ActivationCapture` keywords reproducing a run's tracker (`LEGACY_CAPTURE` for keys it lacks)."""

    def key(name: str) -> Any:
        value = OmegaConf.select(cfg, f"tracker.{name}")
        return LEGACY_CAPTURE[name] if value is None else value

    return {
        "sequence_reduction": str(OmegaConf.select(cfg, "tracker.sequence_reduction") or "token_mean"),
        "conv_reduction": str(key("conv_reduction")),
        "max_rows": int(key("max_rows")),
        "hook_point": str(key("hook_point")),
        "padding_mask": "auto" if bool(key("mask_padding")) else None,
    }


@torch.no_grad()
def capture_probe(
    model: nn.Module,
    probe: torch.Tensor,
    layers: Sequence[str] | None,
    sequence_reduction: str,
    **capture: Any,
) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """The probe's activations and logits, as the tracker measures them (eval mode, no grad).

    Args:
        model: the network (its train/eval flag is restored afterwards).
        probe: (n, ...) inputs.
        layers: module names, or None for the tracker's default selection.
        sequence_reduction: the run's policy for (B, S, F) outputs.
        capture: the run's other `ActivationCapture` keywords (`capture_options`); default: the
            library's (per-position conv rows, pre-activation, padding masked).

    Returns:
        ({layer: (n_rows, k_layer) float32 array}, in model order; the model's logits, a tensor on its
        device: (n, classes) float64, or a language model's (n, S, V) as computed (float32: 205 MB for
        160 x 64 x 5,002 already)). n_rows is n except for per-position conv rows and ``tokens``.
    """
    was_training = model.training
    model.eval()
    try:
        with ActivationCapture(model, layers, sequence_reduction=sequence_reduction, **capture) as cap:
            logits = model(probe)
        order = cap.layer_names
    finally:
        model.train(was_training)
    acts = {name: cap.activations[name].float().cpu().numpy() for name in order if name in cap.activations}
    return acts, (logits.double() if logits.ndim == 2 else logits)


@dataclass(frozen=True)
class ProbeOutcome:
    """What the model predicts on the probe (the training loss and accuracy, `ndt.models.objective`).

    Attributes:
        loss: mean cross-entropy in nats (over examples, or over non-padding next-token positions).
        accuracy: share of scored predictions that are right.
        predictions: (n,) predicted classes, or (n, S) predicted next tokens with -1 where the target
            is padding (not scored).
        n_scored: predictions scored (n, or the non-padding positions).
    """

    loss: float
    accuracy: float
    predictions: np.ndarray
    n_scored: int


@torch.no_grad()
def probe_outcome(logits: torch.Tensor, labels: torch.Tensor) -> ProbeOutcome:
    """Loss, accuracy and predictions of (n, C) or (n, S, V) `logits` against `labels` (n,) or (n, S)."""
    labels = labels.to(logits.device)
    correct, count = correct_and_count(logits, labels)
    pred = logits.argmax(dim=-1)
    if pred.ndim == 2:
        pred = pred.masked_fill(labels == IGNORE_INDEX, -1)
    return ProbeOutcome(
        loss=float(task_loss(logits, labels)),
        accuracy=int(correct) / max(int(count), 1),
        predictions=pred.cpu().numpy(),
        n_scored=int(count),
    )


def dominant_angles(
    before: dict[str, np.ndarray],
    after: dict[str, np.ndarray],
    an_b: dict[str, LayerAnalysis],
    an_a: dict[str, LayerAnalysis],
    max_k: int = ANGLES_MAX_K,
) -> dict[str, np.ndarray]:
    """Principal angles between the subspaces that carry each layer's variance, before and after.

    For each layer, k = the components holding 90% of the centred variance at either moment (the larger
    of the two counts, at most `max_k`), and the angles are those between the top-k principal subspaces
    over the probe samples (`ndt.analysis.principal_angles`, sample space). A fixed k would compare
    directions of negligible variance too: in a layer whose first component holds 99% of the variance,
    the 2nd..10th directions are noise, and their large angles would hide that the layer did not move.

    Args:
        before, after: {layer: (n, k_layer)} captures of the same probe.
        an_b, an_a: their analyses (for the 90% counts).
        max_k: cap on k.

    Returns:
        {layer: (k_eff,) angles in radians, ascending}.
    """
    out = {}
    for name in before:
        k = int(max(an_b[name].summary()["pcs_90"], an_a[name].summary()["pcs_90"]))
        out[name] = principal_angles(before[name], after[name], max(1, min(k, max_k)))
    return out


def compare_analyzed(
    before: dict[str, np.ndarray],
    after: dict[str, np.ndarray],
    an_b: dict[str, LayerAnalysis],
    an_a: dict[str, LayerAnalysis],
    angles: dict[str, np.ndarray],
    metrics: Sequence[str],
) -> pd.DataFrame:
    """`ActivationAnalyzer.compare` of the two captures, reusing what is already computed.

    The metrics come from the analyses and the angles from `dominant_angles`; only CKA is computed here
    (`ActivationAnalyzer.compare` would recompute the metrics and fixed-k angles the table replaces).

    Args:
        before, after: {layer: (n, k_layer)} captures of the same probe.
        an_b, an_a: their analyses.
        angles: {layer: principal angles in radians} (`dominant_angles`).
        metrics: the analyzer's metric names.

    Returns:
        One row per layer (in `before`'s order): `layer`, then the columns of `Comparison.to_row`.
    """
    rows = []
    for name in before:
        comparison = Comparison(
            cka=linear_cka(before[name], after[name]),
            angles=angles[name],
            space="sample",
            metrics=metric_frame(an_b[name].metrics, an_a[name].metrics, metrics),
        )
        rows.append({"layer": name, **comparison.to_row()})
    return pd.DataFrame(rows)


def change_table(
    comparison: pd.DataFrame,
    before: dict[str, LayerAnalysis],
    after: dict[str, LayerAnalysis],
    recorded: pd.DataFrame,
    moments: Moments,
    metric: str,
) -> pd.DataFrame:
    """One row per layer, most changed first (by 1 - CKA, then by mean principal angle).

    Args:
        comparison: `compare_analyzed` of the two captures.
        before, after: `ActivationAnalyzer.analyze` of each.
        recorded: the run's metric rows (for the recorded values at both steps).
        moments: the two steps.
        metric: the investigated metric.

    Returns:
        Columns: layer, layer_order (model order), n_features, change (1 - CKA), cka, n_angles,
        angle_mean, angle_max (radians), angle_mean_deg, angle_max_deg, `metric`_before/_after/_delta,
        `metric`_delta_pct, recorded_before/_after (the Parquet value of `metric`, NaN when that layer
        was not recorded), pc1_before/_after (variance share of the first principal component),
        pcs90_before/_after (components for 90% of the centred variance), then the analyzer's
        ``<m>_before/_after/_delta`` for every metric m.
    """
    t = comparison.copy()
    t.insert(1, "layer_order", np.arange(len(t)))
    t.insert(2, "n_features", [before[n].n_features for n in t["layer"]])
    t.insert(3, "change", 1.0 - t["cka"])
    t["angle_mean_deg"] = np.degrees(t["angle_mean"])
    t["angle_max_deg"] = np.degrees(t["angle_max"])
    b, a = t[f"{metric}_before"], t[f"{metric}_after"]
    t[f"{metric}_delta_pct"] = 100.0 * (a - b) / b.abs().where(b.abs() > 0)
    rec = recorded.set_index(["step", "layer"])[metric]
    for col, step in (("recorded_before", moments.before), ("recorded_after", moments.after)):
        t[col] = [float(rec.get((step, n), math.nan)) for n in t["layer"]]
    for col, source in (("before", before), ("after", after)):
        summaries = {n: source[n].summary() for n in t["layer"]}
        t[f"pc1_{col}"] = [summaries[n]["pc1_ratio"] for n in t["layer"]]
        t[f"pcs90_{col}"] = [summaries[n]["pcs_90"] for n in t["layer"]]
    t = t.sort_values(["change", "angle_mean"], ascending=False, na_position="last", kind="stable")
    return t.reset_index(drop=True)


def replay_check(
    recorded: pd.DataFrame, replayed: dict[int, dict[str, dict[str, float]]], metrics: Sequence[str]
) -> dict[str, Any]:
    """Compare the metrics of the replayed captures with the ones the run recorded at the same steps.

    A match says the replay rebuilt the very model the tracker measured (and that step s means the
    weights `ndt.measure.tracker.steps_done_at` says).

    Args:
        recorded: the run's metric rows.
        replayed: {measurement step: {layer: {metric: value}}} of the replayed captures.
        metrics: metric columns the run recorded.

    Returns:
        {"max_rel_diff": largest |recomputed - recorded| / |recorded| over layers, metrics and both
        steps (None when nothing recorded matches), "n_values": values compared, "ok": max_rel_diff <=
        REPLAY_TOLERANCE, "tolerance"}.
    """
    rows = recorded.set_index(["step", "layer"])
    worst, n = 0.0, 0
    for step, layers in replayed.items():
        for layer, values in layers.items():
            if (step, layer) not in rows.index:
                continue
            for m in metrics:
                ref = float(rows.at[(step, layer), m])
                new = values.get(m, math.nan)
                if not (math.isfinite(ref) and math.isfinite(new)):
                    continue
                worst = max(worst, abs(new - ref) / max(abs(ref), 1e-12))
                n += 1
    return {
        "max_rel_diff": worst if n else None,
        "n_values": n,
        "ok": bool(n) and worst <= REPLAY_TOLERANCE,
        "tolerance": REPLAY_TOLERANCE,
    }


def _pick_examples(pred_b: np.ndarray, pred_a: np.ndarray, k: int) -> np.ndarray:
    """Up to k probe indices: examples whose prediction changed first (what moved), then the others.

    Predictions are (n,) classes or (n, S) next tokens (an example changed when any of its did).
    """
    moved = pred_b != pred_a
    if moved.ndim > 1:
        moved = moved.any(axis=tuple(range(1, moved.ndim)))
    changed = np.flatnonzero(moved)
    rest = np.flatnonzero(~moved)
    return np.sort(np.concatenate([changed, rest])[:k])


def visual_blocks(
    replay: Replay,
    family: str,
    table: pd.DataFrame,
    preds: tuple[np.ndarray, np.ndarray],
    moments: Moments,
    samples: int,
) -> list[FigureBlock]:
    """The visualizer figures that suit the model family and input.

    - image inputs (any family): saliency |d logit_label / d input|, max over channels;
    - CNNs and ResNets (`CONV_FAMILIES`): Grad-CAM of the last conv layer; feature maps of the
      most-changed conv layer;
    - Transformers, ViTs and language models (`ATTENTION_FAMILIES`): per-head attention weights of
      every attention layer, for one example (a language model's cropped to the example's tokens: no
      padding rows or columns).

    Attributions target the true label at both moments, so the two maps answer the same question.
    """
    blocks: list[FigureBlock] = []
    idx = _pick_examples(preds[0], preds[1], samples)
    x = replay.probe[idx]
    y = replay.labels[idx]
    labels = y.cpu().numpy()
    titles = (
        [f"y={labels[i]}  {preds[0][j]}→{preds[1][j]}" for i, j in enumerate(idx)] if labels.ndim == 1 else []
    )
    vis_b, vis_a = FeatureVisualizer(replay.before), FeatureVisualizer(replay.after)
    a, b = moments.before, moments.after
    images = x.detach().float().cpu().numpy()
    is_image = x.is_floating_point() and x.ndim == 4
    caption_pick = (
        "Columns: probe examples whose prediction changed between the two steps first, then others; "
        "titles give the label and the prediction before→after."
    )
    if is_image and family in CONV_FAMILIES:
        cam_b, cam_a = vis_b.grad_cam(x, y), vis_a.grad_cam(x, y)
        last_conv = [n for n, m in replay.after.named_modules() if isinstance(m, nn.Conv2d)][-1]
        blocks.append(
            FigureBlock(
                "gradcam",
                f"Grad-CAM ({last_conv}, target = true label)",
                figures.attribution_figure(images, cam_b, cam_a, titles, a, b, overlay=True),
                f"Where the last conv layer's evidence for the true class lies, at step {a} (middle row) and "
                f"step {b} (bottom row); each map is scaled to its own maximum. {caption_pick}",
            )
        )
    if is_image:
        sal_b = vis_b.saliency(x, y).max(axis=1)
        sal_a = vis_a.saliency(x, y).max(axis=1)
        blocks.append(
            FigureBlock(
                "saliency",
                "Saliency (|d logit of the true label / d input|)",
                figures.attribution_figure(images, sal_b, sal_a, titles, a, b, overlay=False),
                f"Input pixels the true-class logit is most sensitive to; each column's two maps share one "
                f"colour scale, so a brighter map is a more sensitive model. {caption_pick}",
            )
        )
    if is_image and family in CONV_FAMILIES:
        modules = dict(replay.after.named_modules())
        convs = [n for n in table["layer"] if isinstance(modules[n], nn.Conv2d)]
        if convs:
            layer = convs[0]  # the table is sorted by change
            fm_b = vis_b.feature_maps(x[:1], layer)[0]
            fm_a = vis_a.feature_maps(x[:1], layer)[0]
            blocks.append(
                FigureBlock(
                    "feature_maps",
                    f"Feature maps of {layer} (the most-changed conv layer), first example",
                    figures.feature_map_figure(fm_b, fm_a, a, b),
                    f"Pre-activation outputs of the first 16 channels for probe example {int(idx[0])} "
                    f"(label {int(labels[0])}); top block step {a}, bottom block step {b}.",
                )
            )
    if family in ATTENTION_FAMILIES:
        att_b = vis_b.attention_maps(x[:1])
        att_a = vis_a.attention_maps(x[:1])
        if family == "lm":  # the example's own tokens: padding only follows the text (causal: unseen)
            n_tok = max(int((x[0] != PAD_ID).sum()), 1)
            att_b = {n: w[:, :, :n_tok, :n_tok] for n, w in att_b.items()}
            att_a = {n: w[:, :, :n_tok, :n_tok] for n, w in att_a.items()}
        blocks.append(
            FigureBlock(
                "attention",
                "Attention weights, first example",
                figures.attention_figure(
                    {n: w[0] for n, w in att_b.items()}, {n: w[0] for n, w in att_a.items()}, a, b
                ),
                f"Rows: attention layers; left half the heads at step {a}, right half at step {b}; "
                "each cell (query row, key column) is an attention weight, one colour scale per layer.",
            )
        )
    return blocks


def findings(table: pd.DataFrame, summary: dict[str, Any], metric: str, top: int) -> list[str]:
    """A few plain sentences on what changed, for the top of the report and summary.json."""
    m = summary["moments"]
    out = []
    mb, ma = m["before"]["mean_metric"], m["after"]["mean_metric"]
    if mb is not None and ma is not None:
        pct = f" ({100 * (ma - mb) / abs(mb):+.1f}%)" if mb else ""
        out.append(
            f"The layer-mean {metric} went from {mb:.3f} at step {m['before']['step']} to {ma:.3f} at step "
            f"{m['after']['step']}{pct}."
        )
    ranked = table.dropna(subset=["cka"])
    if len(ranked):
        parts = [
            f"{r.layer} (CKA {r.cka:.3f}, mean principal angle {r.angle_mean_deg:.0f}°, {metric} "
            f"{getattr(r, metric + '_before'):.2f} → {getattr(r, metric + '_after'):.2f})"
            for r in ranked.head(top).itertuples()
        ]
        out.append("Most changed: " + "; ".join(parts) + ".")
        least = ranked.iloc[-1]
        if len(ranked) > top:
            out.append(f"Least changed: {least.layer} (CKA {least.cka:.3f}).")
    deltas = table[f"{metric}_delta"]
    if deltas.notna().any():
        i = int(deltas.abs().idxmax())
        out.append(
            f"The largest {metric} change is in {table.at[i, 'layer']} ({deltas[i]:+.3f}, "
            f"{table.at[i, f'{metric}_delta_pct']:+.1f}%)."
        )
    p = summary["probe"]
    lm = p.get("task") == "next_token"
    where = f"{p['n']}-text probe ({p['n_scored']} next-token positions)" if lm else f"{p['n']}-example probe"
    out.append(
        f"On the {where}, {'next-token ' if lm else ''}accuracy went from {100 * p['accuracy_before']:.1f}% "
        f"to {100 * p['accuracy_after']:.1f}% and the loss from {p['loss_before']:.3f} to "
        f"{p['loss_after']:.3f}; {p['changed_predictions']} {'token ' if lm else ''}prediction(s) changed."
    )
    return out


def _jsonable(value: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, recursively (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class InvestigationResult:
    """What `investigate` wrote.

    Attributes:
        out_dir: the output directory.
        report: path of report.html.
        summary_path: path of summary.json.
        summary: the content of summary.json.
        table: the per-layer change table (`change_table`).
    """

    out_dir: Path
    report: Path
    summary_path: Path
    summary: dict[str, Any] = field(repr=False)
    table: pd.DataFrame = field(repr=False)


def recorded_metrics(rows: pd.DataFrame) -> list[str]:
    """The metric columns the run recorded (with at least one value)."""
    return [m for m in METRIC_COLUMNS if rows[m].notna().any()]


def load_run(run: Path, metric: str) -> tuple[dict[str, Any], DictConfig, pd.DataFrame]:
    """The run record, its resolved config and its metric rows, checked for an investigation.

    Raises:
        FileNotFoundError: not an ndt run directory (no run.json), or no metrics directory.
        InvestigationError: no resolved config (cannot be replayed), no rows, `metric` not recorded.
        ValueError: unknown metric.
    """
    record = read_run_json(run)
    config = record.get("config")
    cfg = OmegaConf.create(config if isinstance(config, dict) else {})
    missing = [key for key in REPLAY_KEYS if OmegaConf.select(cfg, key) is None]
    if missing:
        raise InvestigationError(
            f"{run}'s run.json has no resolved config with {', '.join(missing)}: it was not trained by "
            "python -m ndt.run (an imported legacy run?), so it cannot be replayed"
        )
    check_metric(metric)
    rows = read_metrics(run / METRICS_DIR)
    check_rows(run, record, rows, metric)
    return record, cfg, rows


def check_rows(run: Path, record: dict[str, Any], rows: pd.DataFrame, metric: str) -> None:
    """Raise `InvestigationError` when `rows` are empty or did not record `metric`."""
    if rows.empty:
        raise InvestigationError(f"{run} has no metric rows (status {record.get('status')!r})")
    if not rows[metric].notna().any():
        raise InvestigationError(
            f"metric {metric} was not recorded in {run}; recorded: {', '.join(recorded_metrics(rows))}"
        )


#: How a source rebuilds its model: (steps_done (a, b), device, capture keywords, layers) -> `Replay`
#: (the contract of `replay_pair`: the network after exactly a and b optimizer steps, eval mode).
ReplayFn = Callable[[tuple[int, int], torch.device, dict[str, Any], Sequence[str] | None], Replay]


@dataclass(frozen=True)
class RunSource:
    """A run as an investigation reads it: record, config, metric rows, and how to rebuild its model.

    `run_dir_source` reads an ndt run directory into one (the replay is `replay_pair`); a producer of
    runs that are not run directories but replay deterministically builds its own (the validity
    benchmark's cases: `ndt.validate.investigate`), and `investigate_source` writes the same report.

    Attributes:
        path: the run's directory (``run.dir`` of summary.json; the default output is under it).
        record: what run.json holds (run_id, arch, dataset, seed, family, status, final_accuracy,
            layers; "config" is not read: `cfg` is).
        cfg: the resolved config: the keys of `REPLAY_KEYS` (``arch.name``, ``dataset.name`` only
            name the run), ``tracker.center`` and the capture keys `capture_options` reads.
        rows: the metric rows (columns of `ndt.storage.schema`).
        replay: rebuilds the model at two moments (`ReplayFn`).
        command: the command line that writes this report, or None: ``python -m ndt.investigate``'s.
        layers: the layers to capture when the options name none (None: the tracker's default
            selection, which is what `ndt.run` measures).
    """

    path: Path
    record: dict[str, Any]
    cfg: DictConfig
    rows: pd.DataFrame = field(repr=False)
    replay: ReplayFn = field(repr=False)
    command: str | None = None
    layers: tuple[str, ...] | None = None


def run_dir_source(run_dir: str | os.PathLike[str], metric: str) -> RunSource:
    """An ndt run directory as a `RunSource` (raises as `load_run`)."""
    run = Path(run_dir)
    record, cfg, rows = load_run(run, metric)

    def replay(
        steps_done: tuple[int, int],
        device: torch.device,
        capture: dict[str, Any],
        layers: Sequence[str] | None,
    ) -> Replay:
        return replay_pair(run, steps_done, device, capture=capture, layers=layers)

    return RunSource(path=run, record=record, cfg=cfg, rows=rows, replay=replay)


def replay_device(name: str) -> torch.device:
    """The torch device for ``device=name`` ("auto": CUDA when present, else CPU).

    Raises:
        InvestigationError: not a device name, or CUDA asked for and not visible.
    """
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvestigationError(f"device={name}: no CUDA device is visible; use device=cpu or device=auto")
    try:
        return resolve_device(name)
    except RuntimeError:
        raise InvestigationError(f"device={name} is not a device; use cpu, auto, cuda or cuda:N") from None


def report_dir_name(moments: Moments, opts: InvestigateOptions) -> str:
    """The report's directory under ``investigate/``: ``<before>-<after>`` for the layer-mean series,
    ``<before>-<after>.<layer>`` for one layer's (so that neither overwrites the other)."""
    return moments.label if opts.layer is None else f"{moments.label}.{opts.layer}"


def _command(run: Path, opts: InvestigateOptions, moments: Moments) -> str:
    """The ``python -m ndt.investigate`` command line that reproduces this investigation."""
    parts = ["python -m ndt.investigate", str(run)]
    parts.append(f"step={opts.step}" if opts.step is not None else f"jump={moments.rank}")
    parts += [f"metric={opts.metric}", f"detector={opts.detector}"]
    if opts.layer is not None:
        parts.append(f"layer={opts.layer}")
    if opts.layers:
        parts.append(f"layers={','.join(opts.layers)}")
    if opts.out is not None:
        parts.append(f"out={opts.out}")
    return " ".join(parts)


def investigate(
    run_dir: str | os.PathLike[str], options: InvestigateOptions | None = None
) -> InvestigationResult:
    """Investigate one jump (or step) of a run and write report.html and summary.json.

    Args:
        run_dir: an ndt run directory (run.json with the resolved config, metrics/, checkpoints/).
        options: what to investigate (default: the largest jump of the layer-mean participation ratio).

    Returns:
        `InvestigationResult`.

    Raises:
        FileNotFoundError: `run_dir` is not an ndt run directory (no run.json), or has no metrics.
        InvestigationError: the run cannot be replayed (no config), has no metric rows, no such jump,
            a step outside the run, unknown layers or metric not recorded.
        ValueError: unknown metric.
    """
    opts = options or InvestigateOptions()
    return investigate_source(run_dir_source(run_dir, opts.metric), opts)


def investigate_source(source: RunSource, options: InvestigateOptions | None = None) -> InvestigationResult:
    """`investigate` on a `RunSource`: the same report from any run that can be replayed.

    Raises:
        InvestigationError: as `investigate` (and when the source's rows lack the metric).
        ValueError: unknown metric.
    """
    opts = options or InvestigateOptions()
    t_start = time.perf_counter()
    run, record, cfg, rows = source.path, source.record, source.cfg, source.rows
    check_metric(opts.metric)
    check_rows(run, record, rows, opts.metric)
    if opts.layers is None and source.layers is not None:
        opts = replace(opts, layers=source.layers)
    opts = opts.for_run(cfg)  # detector: the run protocol's unless one was named
    device = replay_device(opts.device)
    steps, mean = layer_mean_series(
        rows["step"].to_numpy(), rows[opts.metric].to_numpy(), rows["layer"].to_numpy(), what=opts.metric
    )
    searched, series_name = (steps, mean), f"{run.name}'s layer-mean {opts.metric}"
    if opts.layer is not None:  # one layer's own series instead of the layer mean
        own = rows[rows["layer"].astype(str) == opts.layer].sort_values("step")
        if own.empty:
            names = ", ".join(dict.fromkeys(rows["layer"].astype(str)))
            raise InvestigationError(f"layer={opts.layer} was not measured in {run.name}; measured: {names}")
        ok = np.isfinite(own[opts.metric].to_numpy(dtype=np.float64))
        searched = (own["step"].to_numpy()[ok], own[opts.metric].to_numpy(dtype=np.float64)[ok])
        series_name = f"{run.name}'s {opts.layer} {opts.metric}"
    moments, jumps = choose_moments(
        *searched,
        max_steps=int(cfg.trainer.max_steps),
        jump=opts.jump_rank,
        step=opts.step,
        detector=opts.detector or DEFAULT_DETECTOR,
        series=series_name,
        probe=int(cfg.tracker.probe_size) > 0,
    )
    log.info("%s: %s", run.name, moments.note)

    capture_kw = capture_options(cfg)
    reduction = capture_kw.pop("sequence_reduction")
    try:
        replay = source.replay(
            moments.steps_done, device, {"sequence_reduction": reduction, **capture_kw}, opts.layers
        )
        acts_b, logits_b = capture_probe(replay.before, replay.probe, opts.layers, reduction, **capture_kw)
        out_b = probe_outcome(logits_b, replay.labels)
        del logits_b  # a language model's probe logits are hundreds of MB
    except KeyError:
        measured = list(record.get("layers") or rows["layer"].unique())
        raise InvestigationError(
            f"layers={','.join(opts.layers or ())}: not all are modules of {record.get('arch')}; "
            f"the measured layers are {','.join(measured)}"
        ) from None
    acts_a, logits_a = capture_probe(replay.after, replay.probe, opts.layers, reduction, **capture_kw)
    out_a = probe_outcome(logits_a, replay.labels)
    del logits_a

    t_an = time.perf_counter()
    # No clustering or t-SNE: they would take most of the time and the report shows PCA scatter plots.
    analyzer = ActivationAnalyzer(clustering=False, embed_method=None, center=bool(cfg.tracker.center))
    an_b, an_a = analyzer.analyze(acts_b), analyzer.analyze(acts_a)
    angles = dominant_angles(acts_b, acts_a, an_b, an_a)
    comparison = compare_analyzed(acts_b, acts_a, an_b, an_a, angles, analyzer.metrics)
    table = change_table(comparison, an_b, an_a, rows, moments, opts.metric)
    recorded_cols = recorded_metrics(rows)
    # Layers the tracker estimated (min(n, k) above its exact_max_size) are recomputed with the same
    # seeded estimator: its values, not the exact ones (a few % apart), are what the rows hold.
    cap = cfg.tracker.get("exact_max_size")
    center = bool(cfg.tracker.center)

    def as_tracked(acts: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        return cast(
            dict[str, dict[str, float]],
            compute_metrics(acts, center=center, metrics=recorded_cols, exact_max_size=cap),
        )

    if replay.measured is None:  # a probe run: the probe captures are what the tracker measured
        replayed = {}
        for step, acts, analyzed in ((moments.before, acts_b, an_b), (moments.after, acts_a, an_a)):
            wide = {n: a for n, a in acts.items() if cap is not None and min(a.shape) > cap}
            replayed[step] = {n: a.metrics for n, a in analyzed.items()} | (as_tracked(wide) if wide else {})
    else:  # the training forwards, recomputed as the tracker did (its centring, all recorded metrics)
        replayed = {
            step: as_tracked(acts)
            for step, acts in zip((moments.before, moments.after), replay.measured, strict=True)
        }
    check = replay_check(rows, replayed, recorded_cols)
    if not check["ok"]:
        log.warning(
            "the replayed model's metrics differ from the recorded ones (max relative difference %s): "
            "the replay did not rebuild the measured model exactly",
            check["max_rel_diff"],
        )
    analysis_s = time.perf_counter() - t_an

    t_causal = time.perf_counter()
    causal_layers = [n for n, a in acts_b.items() if a.shape[1] <= CAUSAL_MAX_FEATURES]
    causal_result = (
        causal_section(
            source, replay, causal_layers, searched[0], jumps, moments, device, capture_kw, reduction, opts
        )
        if opts.causal and causal_layers
        else None
    )
    if causal_result is not None:
        causal_result.summary["skipped_layers"] = [n for n in acts_b if n not in causal_layers]
    causal_s = time.perf_counter() - t_causal

    labels = replay.labels.cpu().numpy()
    pred_b, pred_a = out_b.predictions, out_a.predictions
    family = str(record.get("family") or describe(replay.after).family)
    series_at = dict(zip(steps.tolist(), mean.tolist(), strict=True))
    summary: dict[str, Any] = {
        "ndt_version": ndt.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": source.command or _command(run, opts, moments),
        "run": {
            "dir": str(run.resolve()),
            "run_id": record.get("run_id", run.name),
            "arch": record.get("arch"),
            "dataset": record.get("dataset"),
            "seed": record.get("seed"),
            "family": family,
            "status": record.get("status"),
            "final_accuracy": record.get("final_accuracy"),
            "max_steps": int(cfg.trainer.max_steps),
            "sampling_frequency": int(cfg.tracker.sampling_frequency),
        },
        "selection": {
            "kind": moments.kind,
            "jump": moments.rank,
            "requested_step": moments.requested_step,
            "metric": opts.metric,
            "detector": opts.detector,
            "layer": opts.layer,  # None: the layer-mean series (the tables'); else this layer's own
            "n_events": moments.n_events,
            "note": moments.note,
        },
        "event": None if moments.event is None else {"rank": moments.rank, **asdict(moments.event)},
        "events": [{"rank": r, **asdict(e)} for r, e in enumerate(rank_events(jumps), start=1)],
        "moments": {
            name: {"step": step, "steps_done": done, "mean_metric": series_at.get(step)}
            for name, step, done in zip(
                ("before", "after"), (moments.before, moments.after), moments.steps_done, strict=True
            )
        },
        "replay": {
            "device": str(device),
            "checkpoint": replay.checkpoint,
            "replayed_steps": replay.replayed,
            "seconds": round(replay.seconds, 3),
            "check": check,
        },
        "probe": {
            "n": len(labels),
            "task": "next_token" if labels.ndim > 1 else "classification",
            "n_scored": out_b.n_scored,  # examples, or a language model's non-padding positions
            "accuracy_before": out_b.accuracy,
            "accuracy_after": out_a.accuracy,
            "loss_before": out_b.loss,
            "loss_after": out_a.loss,
            "changed_predictions": int((pred_b != pred_a).sum()),
        },
        "layers": table.to_dict(orient="records"),
        "most_changed": table.dropna(subset=["cka"])["layer"].head(opts.top).tolist(),
    }
    summary["findings"] = findings(table, summary, opts.metric, opts.top)
    summary["causal"] = None if causal_result is None else causal_result.summary

    t_fig = time.perf_counter()
    blocks = figure_blocks(rows, *searched, jumps, moments, table, an_b, an_a, labels, opts)
    blocks += visual_blocks(replay, family, table, (pred_b, pred_a), moments, opts.samples)
    if causal_result is not None:
        blocks.append(causal_result.figure)
    figures_s = time.perf_counter() - t_fig
    summary["figures"] = [{"name": b.name, "title": b.title} for b in blocks]
    summary["timings"] = {
        "replay_s": round(replay.seconds, 3),
        "analysis_s": round(analysis_s, 3),
        "causal_s": round(causal_s, 3),
        "figures_s": round(figures_s, 3),
        "total_s": round(time.perf_counter() - t_start, 3),
    }
    summary = _jsonable(summary)
    out_dir = (
        Path(opts.out) if opts.out is not None else run / INVESTIGATE_DIR / report_dir_name(moments, opts)
    )
    out_dir.mkdir(parents=True, exist_ok=True)  # only now: a failed investigation leaves no empty folder
    summary_path = out_dir / SUMMARY_FILE
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    report = out_dir / REPORT_FILE
    report.write_text(render_report(summary, table, blocks), encoding="utf-8")
    log.info("report: %s", report.resolve())
    return InvestigationResult(
        out_dir=out_dir, report=report, summary_path=summary_path, summary=summary, table=table
    )


#: Control stretches start after this share of training: the escape from initialisation is no control.
CONTROL_START_SHARE = 0.1


def control_moments(
    steps: np.ndarray, jumps: Jumps, moments: Moments, max_steps: int
) -> tuple[int, int] | None:
    """(before, after) measured steps of a stretch as long as the investigated one, without an event.

    A candidate pair (steps[i], steps[j]) spans about the same number of steps (the nearest measured
    distance), overlaps no event of the series (transitions and the escape from initialisation, each with
    its measured neighbours) nor the investigated stretch, and starts after `CONTROL_START_SHARE` of
    training; the candidate nearest to the investigated stretch is taken (the same phase of training).

    Args:
        steps: (m,) measurement steps, increasing.
        jumps: the detector's result on the series.
        moments: the investigated moments.
        max_steps: optimizer steps of the run.

    Returns:
        The pair, or None when the run has no such stretch.
    """
    span = moments.after - moments.before
    busy = [(moments.before, moments.after)]
    for e in (*jumps.events, *jumps.init_escape):
        lo = int(steps[max(e.start_index - 1, 0)])
        hi = int(steps[min(e.end_index + 1, steps.size - 1)])
        busy.append((lo, hi))
    best: tuple[float, int, int] | None = None
    start_min = CONTROL_START_SHARE * max_steps
    for i, a in enumerate(steps.tolist()):
        if a < start_min:
            continue
        j = int(np.searchsorted(steps, a + span))
        if j >= steps.size or j <= i:
            continue
        b = int(steps[j])
        if any(a <= hi and lo <= b for lo, hi in busy):
            continue
        distance = abs((a + b) / 2 - (moments.before + moments.after) / 2)
        if best is None or distance < best[0]:
            best = (distance, int(a), b)
    return None if best is None else (best[1], best[2])


@dataclass(frozen=True)
class CausalResult:
    """The causal section of a report: summary.json's ``causal`` and its figure."""

    summary: dict[str, Any]
    figure: FigureBlock


def _causal_rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    keep = [
        "layer",
        "share_after",
        "share_before",
        "share_own_weights",
        "k",
        "ablation_effect",
        "ablation_accuracy_drop",
        "random_mean",
        "random_sd",
        "ablation_z",
        "worst_class",
        "worst_class_change",
    ]
    return [{c: row[c] for c in keep} for row in table.to_dict(orient="records")]


#: Seconds between progress lines of a long causal test (a short one prints none).
PROGRESS_EVERY_S = 30.0


def _progress_log(
    label: str, every_s: float = PROGRESS_EVERY_S, clock: Callable[[], float] = time.perf_counter
) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that logs how far a long loop is and how long the rest will
    take (from the mean time per item so far), at most once every `every_s` seconds of `clock`."""
    start = last = clock()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = clock()
        if now - last < every_s:
            return
        last = now
        elapsed = now - start
        left = elapsed / done * (total - done)
        log.info(
            "%s: %d of %d forwards, %.1f min so far, about %.1f min left",
            label,
            done,
            total,
            elapsed / 60,
            left / 60,
        )

    return report


def causal_section(
    source: RunSource,
    replay: Replay,
    layers: list[str],
    steps: np.ndarray,
    jumps: Jumps,
    moments: Moments,
    device: torch.device,
    capture_kw: dict[str, Any],
    reduction: str,
    opts: InvestigateOptions,
) -> CausalResult:
    """Patching and direction ablation at the investigated moments and at a no-event control stretch.

    See `ndt.analysis.causal`. The control replays the run a second time (`RunSource.replay`: for a run
    directory, from its nearest checkpoint) with the layers of the event's analysis.
    """

    stretches = "the event and a no-event control" if opts.control else "the event"
    log.info(
        "causal tests on %d layers: up to %d forwards of the %d-example probe for each of %s "
        "(causal=false skips them; fewer draws= or layers= make them cheaper, device=auto runs them on a GPU)",
        len(layers),
        causal_forwards(len(layers), opts.draws),
        len(replay.probe),
        stretches,
    )

    def table(r: Replay, label: str) -> pd.DataFrame:
        return causal_table(
            r.before,
            r.after,
            r.probe,
            r.labels,
            layers,
            k=opts.k,
            n_random=opts.draws,
            seed=0,
            progress=_progress_log(f"causal tests ({label})"),
        )

    event = table(replay, "event")
    control_pair = None
    control = None
    if opts.control:
        control_pair = control_moments(steps, jumps, moments, int(source.cfg.trainer.max_steps))
        if control_pair is not None:
            c_moments = replace(moments, before=control_pair[0], after=control_pair[1])
            c_replay = source.replay(
                c_moments.steps_done, device, {"sequence_reduction": reduction, **capture_kw}, layers
            )
            control = table(c_replay, "control")
    by_layer_control = {} if control is None else {r["layer"]: r for _, r in control.iterrows()}
    verdicts = {
        str(r["layer"]): layer_verdict(r, by_layer_control.get(r["layer"])) for _, r in event.iterrows()
    }
    summary: dict[str, Any] = {
        "localised": localise(event),
        "loss_before": event.attrs["loss_before"],
        "loss_after": event.attrs["loss_after"],
        "accuracy_before": event.attrs["acc_before"],
        "accuracy_after": event.attrs["acc_after"],
        "k": opts.k,
        "draws": opts.draws,
        "layers": [{**row, "verdict": verdicts[row["layer"]]} for row in _causal_rows(event)],
        "control": None
        if control is None or control_pair is None
        else {
            "before": control_pair[0],
            "after": control_pair[1],
            "loss_before": control.attrs["loss_before"],
            "loss_after": control.attrs["loss_after"],
            "localised": localise(control),
            "layers": _causal_rows(control),
        },
        "control_note": None
        if control is not None
        else ("control=false" if not opts.control else "no stretch of equal length without an event"),
    }
    png = figures.causal_figure(
        event["layer"].tolist(),
        event["share_own_weights"].to_numpy(dtype=np.float64),
        event["ablation_z"].to_numpy(dtype=np.float64),
        None if control is None else control["share_own_weights"].to_numpy(dtype=np.float64),
        None if control is None else control["ablation_z"].to_numpy(dtype=np.float64),
    )
    where = (
        "" if control_pair is None else f" (grey: the control stretch {control_pair[0]} → {control_pair[1]})"
    )
    caption = (
        "Left: the share of the probe-loss change that each layer's own weights carry (the after-model with "
        "that layer's parameters set back to before; 1 = all of it). Right: the z-score of mean-ablating the "
        "directions the moment added to the layer, against the same number of random directions "
        f"({opts.draws} draws); |z| > {Z_SIGNIFICANT:g} is marked{where}."
    )
    return CausalResult(
        summary=summary,
        figure=FigureBlock("causal", "Causal tests per layer: event and control", png, caption),
    )


def figure_blocks(
    rows: pd.DataFrame,
    steps: np.ndarray,
    mean: np.ndarray,
    jumps: Jumps,
    moments: Moments,
    table: pd.DataFrame,
    an_b: dict[str, LayerAnalysis],
    an_a: dict[str, LayerAnalysis],
    labels: np.ndarray,
    opts: InvestigateOptions,
) -> list[FigureBlock]:
    """The figures every report has: series, change per layer, PCA scatter, spectra.

    `labels` are the probe's (n,) classes, or a language model's (n, S) targets (the PCA scatter is
    then one colour: its examples have no class).
    """
    metric, a, b = opts.metric, moments.before, moments.after
    ordered = rows.sort_values(["layer_index", "step"], kind="stable")
    per_layer = {
        str(name): (g["step"].to_numpy(), g[metric].to_numpy(dtype=np.float64))
        for name, g in ordered.groupby("layer", sort=False, observed=True)
    }
    highlight = None if moments.event is None else (moments.event.start_step, moments.event.end_step)
    in_order = table.sort_values("layer_order")
    # PCA scatter colours points by their example's label: only layers with one row per probe example
    # (per-position conv rows and token rows are not examples).
    per_example = [
        n for n in table.dropna(subset=["cka"])["layer"] if an_b[n].pca.scores.shape[0] == len(labels)
    ]
    top = per_example[: opts.top]
    pca_panels = {
        n: (
            an_b[n].pca.scores[:, :2],
            figures.align_signs(an_b[n].pca.scores[:, :2], an_a[n].pca.scores[:, :2]),
            an_b[n].pca.explained_variance_ratio[:2],
            an_a[n].pca.explained_variance_ratio[:2],
        )
        for n in top
    }
    blocks = [
        FigureBlock(
            "series",
            f"{metric} over training",
            figures.series_figure(
                steps,
                mean,
                per_layer,
                jumps,
                a,
                b,
                metric=metric,
                highlight=highlight,
                threshold=detector_threshold(opts.detector),
            ),
            f"Left: the whole run; right: a zoom around the compared steps {a} (blue) and {b} (red). Top: the "
            f"series the detector ({opts.detector}) ran on (the layer mean, or layer=), with its events shaded (the investigated "
            "one darker); middle: each layer; bottom: the detector's z-score.",
        ),
        FigureBlock(
            "change",
            "How much each layer changed",
            figures.change_figure(
                in_order["layer"].tolist(),
                in_order["cka"].to_numpy(),
                in_order["angle_mean_deg"].to_numpy(),
                in_order[f"{metric}_delta_pct"].to_numpy(),
                metric,
            ),
            "Layers in model order (input at the top). 1 - CKA and the mean principal angle between the top "
            "principal subspaces (over the probe samples) measure how much the geometry of the representation "
            f"moved; the last panel is the relative change of {metric}.",
        ),
    ]
    if pca_panels:
        blocks.append(
            FigureBlock(
                "pca",
                f"PCA of the probe in the most-changed layer{'s' if len(pca_panels) > 1 else ''}",
                figures.pca_figure(pca_panels, labels if labels.ndim == 1 else None, a, b),
                "Each point is a probe example, coloured by its label, in the first two principal components "
                "of the layer's (centred) activations; the after-components are sign-aligned with the "
                "before-components so that an unchanged direction is not mirrored.",
            )
        )
    blocks.append(
        FigureBlock(
            "spectrum",
            "Singular-value spectra",
            figures.spectrum_figure(
                {n: (an_b[n].singular_values, an_a[n].singular_values) for n in in_order["layer"]}, a, b
            ),
            "Singular values of each layer's probe activations (uncentred unless the run centred: the spectrum "
            f"the metrics come from), divided by the largest; step {a} in blue, step {b} in red. A flatter "
            "curve is a higher-dimensional representation.",
        )
    )
    return blocks
