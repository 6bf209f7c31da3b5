"""The report's figures: arrays in, PNG bytes out (matplotlib's Agg canvas; no pyplot, no display).

Every function draws the *before* and *after* states side by side, in the same colours and, where it
helps the comparison, on the same scale. Shapes are stated per argument; n is the probe size.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, cast

import numpy as np

from ndt.detect.study import Jumps

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Resolution of the embedded PNGs: sharp on screen, small enough to keep report.html light.
DPI = 100
BEFORE_COLOR = "tab:blue"
AFTER_COLOR = "tab:red"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure  # lazy: matplotlib costs an import only when drawing

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def to_png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _mark_moments(ax: Axes, before: int, after: int, label: bool = False) -> None:
    ax.axvline(
        before, color=BEFORE_COLOR, ls="--", lw=1.2, label=f"before (step {before})" if label else None
    )
    ax.axvline(after, color=AFTER_COLOR, ls="--", lw=1.2, label=f"after (step {after})" if label else None)


def series_figure(
    steps: np.ndarray,
    mean: np.ndarray,
    per_layer: Mapping[str, tuple[np.ndarray, np.ndarray]],
    jumps: Jumps,
    before: int,
    after: int,
    *,
    metric: str,
    highlight: tuple[int, int] | None = None,
    threshold: float | None = None,
) -> bytes:
    """The metric over training: the whole run (left) and a zoom around the two moments (right).

    Rows: the layer-mean series with every detected event shaded (the investigated one darker), each
    layer's own series, and the detector's z-score.

    Args:
        steps: (m,) measurement steps.
        mean: (m,) layer-mean metric.
        per_layer: {layer: ((m_l,) steps, (m_l,) values)}, in model order.
        jumps: the detector's result on `mean` (events and z).
        before, after: the two measurement steps compared.
        metric: metric name (axis labels).
        highlight: (start_step, end_step) of the investigated event, or None.
        threshold: the detector's z threshold (a dotted line), or None.
    """
    fig = _figure(12, 8.2)
    axes = fig.subplots(
        3, 2, sharex="col", gridspec_kw={"width_ratios": [3, 2], "height_ratios": [3, 3, 1.6]}
    )
    every = float(np.median(np.diff(steps))) if steps.size > 1 else 1.0
    span = max(after - before, every)
    lo, hi = before - 4 * span, after + 4 * span  # the zoom: the pair and a few of its widths around it
    for col in (0, 1):
        ax_mean, ax_layers, ax_z = axes[:, col]
        for event in jumps.events:
            chosen = highlight == (event.start_step, event.end_step)
            for ax in axes[:, col]:  # half a sample either side: a one-sample event still shows
                ax.axvspan(
                    event.start_step - every / 2,
                    event.end_step + every / 2,
                    color="orange",
                    alpha=0.35 if chosen else 0.12,
                    lw=0,
                )
        ax_mean.plot(steps, mean, color="0.15", lw=1.3, label=f"mean {metric} over layers")
        for name, (s, v) in per_layer.items():
            ax_layers.plot(s, v, lw=1.0, label=name)
        if jumps.z.size == steps.size:
            ax_z.plot(steps, jumps.z, color="0.3", lw=1.0)
        if threshold is not None:
            ax_z.axhline(threshold, color="orange", lw=1.0, ls=":")
        ax_z.set_ylabel("detector z" if col == 0 else "")
        for ax in axes[:, col]:
            _mark_moments(ax, before, after, label=ax is ax_mean)
            ax.grid(alpha=0.3)
        if col == 1:
            x0, x1 = max(lo, float(steps[0])), min(hi, float(steps[-1]))
            ax_mean.set_xlim(x0 - 0.02 * (x1 - x0), x1 + 0.02 * (x1 - x0))  # a moment at an end stays visible
            in_view = (steps >= lo) & (steps <= hi)
            if in_view.any():
                _fit_y(ax_mean, mean[in_view])
                _fit_y(ax_layers, np.concatenate([v[(s >= lo) & (s <= hi)] for s, v in per_layer.values()]))
                _fit_y(ax_z, jumps.z[in_view] if jumps.z.size == steps.size else np.zeros(1))
            ax_mean.set_title(f"zoom: steps {x0:.0f}..{x1:.0f}", fontsize=10)
        else:
            ax_mean.set_title("whole run (shaded: detected jump events)", fontsize=10)
            ax_mean.set_ylabel(f"mean {metric}")
            ax_layers.set_ylabel(f"{metric} per layer")
        ax_z.set_xlabel("training step")
    axes[0, 0].legend(fontsize=8, loc="best")
    axes[1, 1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return to_png(fig)


def _fit_y(ax: Axes, values: np.ndarray) -> None:
    finite = values[np.isfinite(values)]
    if finite.size:
        a, b = float(finite.min()), float(finite.max())
        pad = 0.08 * (b - a) if b > a else max(abs(a) * 0.05, 1e-6)
        ax.set_ylim(a - pad, b + pad)


def change_figure(
    layers: Sequence[str], cka: np.ndarray, angle_deg: np.ndarray, delta_pct: np.ndarray, metric: str
) -> bytes:
    """How much each layer changed, in model order: 1 - CKA, mean principal angle, metric change.

    Args:
        layers: L layer names, input side first.
        cka: (L,) linear CKA between before and after.
        angle_deg: (L,) mean principal angle in degrees.
        delta_pct: (L,) relative change of `metric` in percent.
        metric: metric name.
    """
    fig = _figure(12, 0.9 + 0.32 * len(layers))
    axes = fig.subplots(1, 3, sharey=True)
    y = np.arange(len(layers))
    panels = (
        (1.0 - np.asarray(cka), "1 - CKA (0: same geometry)", "tab:purple"),
        (angle_deg, "mean principal angle (degrees)", "tab:green"),
        (delta_pct, f"{metric} change (%)", "tab:orange"),
    )
    for ax, (vals, title, color) in zip(axes, panels, strict=True):
        ax.barh(y, np.nan_to_num(vals), color=color)
        ax.set_title(title, fontsize=10)
        ax.axvline(0, color="0.3", lw=0.8)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, list(layers), fontsize=8)
    axes[0].invert_yaxis()  # input side on top, as the model reads
    return to_png(fig)


def causal_figure(
    layers: Sequence[str],
    own_share: np.ndarray,
    z: np.ndarray,
    control_share: np.ndarray | None = None,
    control_z: np.ndarray | None = None,
    z_mark: float = 3.0,
) -> bytes:
    """The causal tests per layer, in model order: own-weights share of the change, ablation z.

    Args:
        layers: L layer names, input side first.
        own_share: (L,) share of the probe-loss change carried by each layer's own weights.
        z: (L,) ablation z-scores of the directions the moment added.
        control_share, control_z: (L,) the same on the no-event control stretch, or None.
        z_mark: |z| drawn as the significance line.
    """
    fig = _figure(11, 1.0 + 0.34 * len(layers))
    axes = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(layers))
    height = 0.38 if control_share is not None else 0.7
    for ax, vals, ctrl, title in (
        (axes[0], own_share, control_share, "own weights' share of the loss change"),
        (axes[1], z, control_z, "ablation z (added directions vs random)"),
    ):
        ax.barh(
            y - (height / 2 if ctrl is not None else 0),
            np.nan_to_num(vals),
            height,
            color="tab:red",
            label="event",
        )
        if ctrl is not None:
            ax.barh(y + height / 2, np.nan_to_num(ctrl), height, color="0.65", label="control")
        ax.set_title(title, fontsize=10)
        ax.axvline(0, color="0.3", lw=0.8)
        ax.grid(axis="x", alpha=0.3)
    for sign in (-1, 1):
        axes[1].axvline(sign * z_mark, color="tab:red", ls=":", lw=0.8)
    if control_share is not None:
        axes[1].legend(fontsize=8, loc="lower right")
    axes[0].set_yticks(y, list(layers), fontsize=8)
    axes[0].invert_yaxis()  # input side on top, as the model reads
    return to_png(fig)


def align_signs(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Flip each column of `scores` whose correlation with the same column of `reference` is negative.

    A principal component is defined up to its sign; aligning the after-scores with the before-scores
    keeps an unchanged direction from looking mirrored in the scatter plots.

    Args:
        reference: (n, c) scores.
        scores: (n, c) scores of the same samples.

    Returns:
        (n, c) copy of `scores` with some columns negated.
    """
    signs = np.where(np.sum(reference * scores, axis=0) < 0, -1.0, 1.0)
    return scores * signs


def pca_figure(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    labels: np.ndarray | None,
    before: int,
    after: int,
) -> bytes:
    """The probe in the first two principal components of a layer, before and after, coloured by label.

    Args:
        panels: {layer: ((n, 2) scores before, (n, 2) scores after, (2,) variance ratios before,
            (2,) variance ratios after)}; a one-feature layer gives (n, 1) scores (plotted against 0).
        labels: (n,) integer class of each probe example; None (a language model's probe: its
            examples have no class) draws every point in one colour, without a legend.
        before, after: the measurement steps (titles).
    """
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    fig = _figure(9, 0.4 + 3.9 * len(panels))
    axes = fig.subplots(len(panels), 2, squeeze=False)
    for row, (layer, (sb, sa, rb, ra)) in enumerate(panels.items()):
        for col, (scores, ratio, step) in enumerate(((sb, rb, before), (sa, ra, after))):
            ax = axes[row, col]
            ys = scores[:, 1] if scores.shape[1] > 1 else np.zeros(len(scores))
            if labels is not None:
                ax.scatter(scores[:, 0], ys, c=cmap(labels % 10), s=14, lw=0)
            else:
                ax.scatter(scores[:, 0], ys, color=cmap(0), s=14, lw=0)
            ax.set_title(f"{layer} at step {step}", fontsize=10)
            ax.set_xlabel(f"PC1 ({100 * ratio[0]:.0f}% of variance)", fontsize=9)
            if ratio.size > 1:
                ax.set_ylabel(f"PC2 ({100 * ratio[1]:.0f}%)", fontsize=9)
            ax.tick_params(labelsize=7)
    if labels is None:
        return to_png(fig)
    for c in np.unique(labels)[:10]:  # one legend entry per class
        axes[0, 1].scatter([], [], color=cmap(int(c) % 10), s=14, label=str(int(c)))
    axes[0, 1].legend(
        title="label", fontsize=7, title_fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5)
    )
    return to_png(fig)


def spectrum_figure(spectra: Mapping[str, tuple[np.ndarray, np.ndarray]], before: int, after: int) -> bytes:
    """Singular values of each layer's probe activations, before and after, scaled by the largest.

    Args:
        spectra: {layer: ((r,) before, (r,) after)} descending singular values (the spectrum the
            metrics are computed from), in model order.
        before, after: the measurement steps (legend).
    """
    n = len(spectra)
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig = _figure(3.0 * cols + 0.6, 2.5 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    for ax, (layer, (sb, sa)) in zip(axes.flat, spectra.items(), strict=False):
        for s, color, step in ((sb, BEFORE_COLOR, before), (sa, AFTER_COLOR, after)):
            scaled = s / s[0] if s.size and s[0] > 0 else s
            ax.semilogy(
                np.arange(1, s.size + 1),
                np.clip(scaled, 1e-8, None),
                color=color,
                lw=1.3,
                label=f"step {step}",
            )
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("index i", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("s_i / s_1", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    return to_png(fig)


def _scaled(img: np.ndarray) -> np.ndarray:
    """(H, W) or (1, H, W) or (3, H, W) -> an imshow-ready image in [0, 1]."""
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def attribution_figure(
    images: np.ndarray,
    maps_before: np.ndarray,
    maps_after: np.ndarray,
    titles: Sequence[str],
    before: int,
    after: int,
    *,
    overlay: bool,
) -> bytes:
    """Per-example heat maps (Grad-CAM, saliency) before and after: rows input, before, after.

    Args:
        images: (B, C, H, W) or (B, H, W) probe inputs.
        maps_before, maps_after: (B, H, W) maps. Each example's pair shares one colour scale, so a
            map that faded or sharpened shows as such.
        titles: B column titles (label and predictions).
        before, after: the measurement steps (row labels).
        overlay: draw the maps over the image (Grad-CAM) instead of alone (saliency).
    """
    b = len(images)
    fig = _figure(1.55 * b + 0.8, 5.0)
    axes = fig.subplots(3, b, squeeze=False)
    for i in range(b):
        img = _scaled(images[i])
        vmax = max(float(maps_before[i].max()), float(maps_after[i].max()), 1e-12)
        axes[0, i].imshow(img, cmap="gray")
        axes[0, i].set_title(titles[i], fontsize=7)
        for row, maps in ((1, maps_before), (2, maps_after)):
            ax = axes[row, i]
            if overlay:
                ax.imshow(img, cmap="gray")
                ax.imshow(maps[i], cmap="jet", alpha=0.5, vmin=0.0, vmax=vmax)
            else:
                ax.imshow(maps[i], cmap="hot", vmin=0.0, vmax=vmax)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for row, text in enumerate(("input", f"step {before}", f"step {after}")):
        axes[row, 0].set_ylabel(text, fontsize=9)
    return to_png(fig)


def feature_map_figure(
    maps_before: np.ndarray, maps_after: np.ndarray, before: int, after: int, max_maps: int = 16
) -> bytes:
    """The first channels of one example's feature maps: a block for before, a block for after.

    Args:
        maps_before, maps_after: (C, H, W) outputs of one layer for one example.
        before, after: the measurement steps (block titles).
        max_maps: channels shown.
    """
    c = min(len(maps_before), max_maps)
    cols = min(c, 8)
    rows = int(np.ceil(c / cols))
    fig = _figure(1.3 * cols + 0.4, 2 * (1.45 * rows + 0.35))
    for sub, maps, step in zip(
        cast(np.ndarray, fig.subfigures(2, 1)), (maps_before, maps_after), (before, after), strict=True
    ):
        sub.suptitle(f"step {step}", fontsize=10, color=BEFORE_COLOR if step == before else AFTER_COLOR)
        axes = sub.subplots(rows, cols, squeeze=False)
        for ch, ax in enumerate(axes.flat):
            ax.set_axis_off()
            if ch < c:
                ax.imshow(maps[ch], cmap="viridis")
                ax.set_title(f"ch {ch}", fontsize=7)
    return to_png(fig)


def attention_figure(
    before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray], step_a: int, step_b: int
) -> bytes:
    """Attention weights of one example, one row per attention layer: heads before | heads after.

    Args:
        before, after: {module name: (heads, L, S)} weights (rows sum to 1), same keys.
        step_a, step_b: the measurement steps (titles).
    """
    names = [n for n in before if n in after]
    heads = max(before[n].shape[0] for n in names)
    fig = _figure(1.5 * 2 * heads + 0.6, 1.7 * len(names) + 0.5)
    axes = fig.subplots(len(names), 2 * heads, squeeze=False)
    for r, name in enumerate(names):
        vmax = max(float(before[name].max()), float(after[name].max())) or 1.0  # one scale per layer
        for half, (weights, step) in enumerate(((before[name], step_a), (after[name], step_b))):
            for h in range(heads):
                ax = axes[r, half * heads + h]
                ax.set_xticks([])
                ax.set_yticks([])
                if h >= weights.shape[0]:
                    ax.set_axis_off()
                    continue
                ax.imshow(weights[h], cmap="viridis", vmin=0.0, vmax=vmax)
                ax.set_title(f"step {step} head {h}", fontsize=7)
        axes[r, 0].set_ylabel(name.replace(".self_attn", ""), fontsize=7)
    return to_png(fig)
