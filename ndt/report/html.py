"""report.html: one self-contained page (inline CSS, PNGs as base64 data URIs, no scripts, no links out).

Sections, in reading order: header (run, moments, the jump's z and magnitude, replay), findings (plain
sentences), the metric series, the per-layer change table (most changed first) and figure, PCA scatter
plots, spectra, the visualizer figures of the family, then every metric's change and the provenance.

summary.json holds the same numbers: ``run``, ``selection``, ``event`` (null for step=N), ``events``
(every event, ranked), ``moments`` (before/after: step, steps_done, mean_metric), ``replay`` (device,
checkpoint, replayed_steps, seconds, check), ``probe`` (n, task, n_scored: examples or a language
model's next-token positions, accuracy and loss before/after, changed_predictions), ``layers`` (the
change table's rows, most changed first), ``most_changed``, ``findings``, ``causal`` (null with
causal=false: ``localised``, probe loss/accuracy before and after, ``layers`` with each layer's
patching shares, ablation effect and z, verdict, ``skipped_layers`` (wider than
``CAUSAL_MAX_FEATURES``), and ``control`` with the same for a no-event stretch), ``figures``,
``timings``, ``command``, ``ndt_version``, ``created``.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ndt.storage.schema import METRIC_COLUMNS


@dataclass(frozen=True)
class FigureBlock:
    """One figure of the report.

    Attributes:
        name: short identifier (summary.json ``figures``, HTML anchor).
        title: heading.
        png: the image, PNG bytes.
        caption: how to read it.
    """

    name: str
    title: str
    png: bytes
    caption: str


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #1d1d1f;
       max-width: 1240px; margin: 24px auto; padding: 0 20px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 30px;
       border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.sub { color: #555; margin-top: 0; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(270px, 1fr)); gap: 4px 24px; }
.facts div { padding: 2px 0; } .facts b { color: #444; font-weight: 600; }
table { border-collapse: collapse; font-size: 12.5px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f4f4f6; } td:first-child, th:first-child { text-align: left; }
tr.top td { background: #fff6e5; }
img { max-width: 100%; border: 1px solid #eee; }
.caption { color: #555; font-size: 13px; max-width: 1000px; }
.warn { background: #fdecea; border: 1px solid #f5c2c0; padding: 6px 10px; }
.ok { color: #1b7f3b; } ul.findings li { margin: 3px 0; }
code { background: #f4f4f6; padding: 1px 4px; border-radius: 3px; }
details { margin-top: 8px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any, fmt: str = ".3f") -> str:
    """A number for a table cell ("–" for missing; "∞" for an infinite one, such as the z of a jump
    over a background that does not move)."""
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, fmt)


def _image(block: FigureBlock) -> str:
    data = base64.b64encode(block.png).decode("ascii")
    return (
        f'<h2 id="{_e(block.name)}">{_e(block.title)}</h2>\n'
        f'<img alt="{_e(block.title)}" src="data:image/png;base64,{data}">\n'
        f'<p class="caption">{_e(block.caption)}</p>'
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], highlight: int = 0) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "\n".join(
        f"<tr{' class=top' if i < highlight else ''}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def change_rows(table: pd.DataFrame, metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the per-layer change table (rows in the table's order: most changed first)."""
    header = [
        "layer",
        "features",
        "CKA",
        "1 − CKA",
        "mean angle (°)",
        "max angle (°)",
        f"{metric} before",
        f"{metric} after",
        "Δ",
        "Δ %",
        "PC1 share before → after",
        "PCs for 90% before → after",
    ]
    rows = [
        [
            _e(r["layer"]),
            str(int(r["n_features"])),
            _num(r["cka"]),
            _num(r["change"]),
            _num(r["angle_mean_deg"], ".1f"),
            _num(r["angle_max_deg"], ".1f"),
            _num(r[f"{metric}_before"]),
            _num(r[f"{metric}_after"]),
            _num(r[f"{metric}_delta"], "+.3f"),
            _num(r[f"{metric}_delta_pct"], "+.1f"),
            f"{_num(r['pc1_before'], '.2f')} → {_num(r['pc1_after'], '.2f')}",
            f"{_num(r['pcs90_before'], '.0f')} → {_num(r['pcs90_after'], '.0f')}",
        ]
        for _, r in table.iterrows()
    ]
    return header, rows


def metric_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the every-metric table: before → after (Δ) per layer and metric."""
    metrics = [m for m in METRIC_COLUMNS if f"{m}_before" in table.columns]
    rows = [
        [_e(r["layer"])]
        + [
            f"{_num(r[f'{m}_before'], '.2f')} → {_num(r[f'{m}_after'], '.2f')} ({_num(r[f'{m}_delta'], '+.2f')})"
            for m in metrics
        ]
        for _, r in table.sort_values("layer_order").iterrows()
    ]
    return ["layer", *metrics], rows


def _step_meaning(moments: dict[str, Any]) -> str:
    """What step s means in this run: s + 1 optimizer steps done with a probe, s without one."""
    after = moments["after"]
    if after["steps_done"] == after["step"]:
        return (
            "Step s holds the weights after s optimizer steps (a run without a probe: its rows "
            "measured the training forward of step s)."
        )
    return "Step s holds the weights after s + 1 optimizer steps."


def _series_of(selection: dict[str, Any]) -> str:
    """Which series the jumps were searched in: ``layer-mean``, or ``layer <name>``."""
    layer = selection.get("layer")
    return "layer-mean" if layer is None else f"layer {layer}"


def _facts(summary: dict[str, Any]) -> str:
    run, sel, mom, rep, probe = (summary[k] for k in ("run", "selection", "moments", "replay", "probe"))
    event = summary.get("event")
    facts = [
        ("run", run["run_id"]),
        ("architecture", f"{run['arch']} ({run['family']})"),
        ("dataset", run["dataset"]),
        ("seed", run["seed"]),
        ("status", f"{run['status']}, final test accuracy {_num(run['final_accuracy'], '.3f')}"),
        ("training", f"{run['max_steps']} steps, measured every {run['sampling_frequency']}"),
        (
            "series",
            f"{_series_of(sel)} {sel['metric']}, detector {sel['detector']} ({sel['n_events']} event(s))",
        ),
    ]
    if event is not None:
        facts += [
            ("jump", f"rank {event['rank']} of {sel['n_events']} by peak magnitude"),
            ("flagged steps", f"{event['start_step']}..{event['end_step']} (peak at {event['peak_step']})"),
            ("peak z", _num(event["peak_z"], ".2f")),
            ("peak magnitude", _num(event["peak_magnitude"], ".4g")),
        ]
    else:
        facts.append(("step", f"step={sel['requested_step']} requested"))
    for name in ("before", "after"):
        m = mom[name]
        facts.append(
            (
                name,
                f"step {m['step']} ({m['steps_done']} optimizer steps), mean {sel['metric']} {_num(m['mean_metric'])}",
            )
        )
    facts += [
        (
            "replay",
            f"{rep['replayed_steps']} step(s) on {rep['device']} from "
            + (f"checkpoint step_{rep['checkpoint']:06d}" if rep["checkpoint"] else "initialisation")
            + f", {rep['seconds']:.1f}s",
        ),
        ("probe", f"{probe['n']} test examples"),
    ]
    return '<div class="facts">' + "".join(f"<div><b>{_e(k)}:</b> {_e(v)}</div>" for k, v in facts) + "</div>"


def _check(summary: dict[str, Any]) -> str:
    check = summary["replay"]["check"]
    if check["ok"]:
        return (
            f'<p class="ok">Replay check passed: the replayed models reproduce the {check["n_values"]} recorded metric '
            f"values at both steps (largest relative difference {check['max_rel_diff']:.1e}).</p>"
        )
    worst = (
        "no recorded value to compare" if check["max_rel_diff"] is None else f"{check['max_rel_diff']:.2e}"
    )
    return (
        '<p class="warn">Replay check failed: the replayed models do not reproduce the recorded metrics '
        f"({worst}; tolerance {check['tolerance']:.0e}). The figures describe the replayed models, which differ "
        "from the ones measured during training (a GPU replay, or a changed code or data version?).</p>"
    )


def _causal(causal: dict[str, Any] | None, figure: FigureBlock | None) -> list[str]:
    """The causal section: where the change that matters is, one verdict per layer, the figure, a table."""
    if not causal:
        return []
    loc = causal["localised"]
    lead = (
        f"Patching localises the change: the output of <b>{_e(loc)}</b> from before restores at least half of "
        "the probe-loss change (the change lies at that layer or between it and the layer before)."
        if loc
        else "No single layer's output from before restores half of the probe-loss change."
    )
    ctrl = causal.get("control")
    ctrl_text = (
        f"Control: the same tests over steps {ctrl['before']} → {ctrl['after']}, a stretch as long without an event."
        if ctrl
        else f"No control stretch: {_e(causal.get('control_note'))}."
    )
    if causal.get("skipped_layers"):
        ctrl_text += (
            f" Not tested (too wide for the F x F covariances): {_e(', '.join(causal['skipped_layers']))}."
        )
    header = [
        "layer",
        "output patch share",
        "own weights share",
        "k",
        "ablation Δloss",
        "z",
        "control z",
        "verdict",
    ]
    ctrl_z = {r["layer"]: r["ablation_z"] for r in ctrl["layers"]} if ctrl else {}
    rows = [
        [
            _e(r["layer"]),
            _num(r["share_after"], ".2f"),
            _num(r["share_own_weights"], ".2f"),
            str(r["k"]),
            _num(r["ablation_effect"], ".3g"),
            _num(r["ablation_z"], ".1f"),
            _num(ctrl_z.get(r["layer"]), ".1f"),
            _e(r["verdict"].split(":", 1)[0]),
        ]
        for r in causal["layers"]
    ]
    return [
        '<h2 id="causal">Does the change matter? (causal tests)</h2>',
        f"<p>Probe loss {causal['loss_before']:.4g} → {causal['loss_after']:.4g}, accuracy "
        f"{causal['accuracy_before']:.3f} → {causal['accuracy_after']:.3f}. {lead} {ctrl_text}</p>",
        '<ul class="findings">'
        + "".join(f"<li><b>{_e(r['layer'])}</b>: {_e(r['verdict'])}</li>" for r in causal["layers"])
        + "</ul>",
        *([_image(figure)] if figure is not None else []),
        _table(header, rows),
    ]


def render_report(summary: dict[str, Any], table: pd.DataFrame, blocks: Sequence[FigureBlock]) -> str:
    """The whole report page.

    Args:
        summary: the content of summary.json (see the module docstring).
        table: the per-layer change table (`ndt.report.investigation.change_table`), most changed first.
        blocks: the figures, in page order; "series" and "change" frame the change table.
    """
    run, sel, mom = summary["run"], summary["selection"], summary["moments"]
    metric = sel["metric"]
    a, b = mom["before"]["step"], mom["after"]["step"]
    what = f"jump {sel['jump']}" if sel["kind"] == "jump" else f"step {b}"
    by_name = {blk.name: blk for blk in blocks}
    header, rows = change_rows(table, metric)
    m_header, m_rows = metric_rows(table)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ndt investigate: {_e(run['run_id'])} {what} (steps {a}→{b})</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{_e(run['run_id'])}: {_e(what)}, steps {a} → {b}</h1>",
        f'<p class="sub">{_e(sel["note"])}. {_step_meaning(mom)}</p>',
        _facts(summary),
        _check(summary),
        "<h2>What changed</h2>",
        '<ul class="findings">' + "".join(f"<li>{_e(f)}</li>" for f in summary["findings"]) + "</ul>",
    ]
    if "series" in by_name:
        parts.append(_image(by_name["series"]))
    parts += [
        '<h2 id="table">Per-layer change, most changed first</h2>',
        _table(header, rows, highlight=len(summary["most_changed"])),
        '<p class="caption">CKA: linear centred kernel alignment of the probe activations before and after (1: '
        "same geometry up to rotation and scale). Angles: principal angles between the principal subspaces "
        "that hold 90% of the layer's centred variance (at most 10 directions), over the probe samples. "
        f"{_e(metric)}: recomputed on the replayed models' probe activations.</p>",
    ]
    parts += _causal(summary.get("causal"), by_name.get("causal"))
    parts += [_image(blk) for blk in blocks if blk.name not in ("series", "causal")]
    parts += [
        "<h2>Every metric, before → after (Δ)</h2>",
        "<details open><summary>per layer, model order</summary>" + _table(m_header, m_rows) + "</details>",
        "<h2>Provenance</h2>",
        f"<p>Reproduce: <code>{_e(summary['command'])}</code><br>ndt {_e(summary['ndt_version'])}, written "
        f"{_e(summary['created'])}; the numbers are in <code>summary.json</code> beside this file.</p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
