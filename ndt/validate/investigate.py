"""The investigate report at a benchmark case's transition, and the causal check it must pass.

``python -m ndt.validate --investigate B [--seed S] [--seeds N] [--out results/validate]``

The benchmark's runs are not ndt run directories (no run.json, no checkpoints), but they replay exactly:
everything in a run is drawn from its seed. This module turns one into a `ndt.report.RunSource` and
writes the report of ``python -m ndt.investigate`` with the same code (`ndt.report.investigate_source`):

1. the case's run of seed S is trained (or read from ``<out>/cache/``, as the benchmark does);
2. the benchmark's passing pair for the case (`PAIRS`: for B, the changepoint detector on the hidden
   layer's participation ratio) runs on the named layer's series; of its transition events, the one
   whose peak is nearest the truth step t* is investigated (its rank by peak magnitude is ``jump=K``);
3. the replay retrains the run from its seed to the two moments (`ParityTraining`, bit-identical on
   CPU: the report's replay check compares the recomputed metrics with the recorded ones). The report
   needs class logits and the case's model outputs one margin f, so the replayed model ends in
   `MarginLogits`: logits (-f/2, f/2), i.e. P(y = +1) = sigmoid(f); the report's loss is then the
   logistic loss of the margin, its accuracy the case's (sign f);
4. the report goes to ``<out>/investigate/<case>_s<seed>/`` (report.html, summary.json), and
   `criterion` reads summary.json: does the report name the hidden layer, and is ablating the
   hidden layer's added directions at the event worse than at the report's no-event control?

The criterion (issue 15), decided from summary.json alone:

- **names the layer**: the causal section localises the change there (``causal.localised``: the first
  layer whose output patch recovers >= 50% of the probe-loss change) and that layer's verdict is
  "effect";
- **larger than the control**: the layer's ``ablation_effect`` (probe-loss increase when its added
  directions are mean-ablated at the after-step) exceeds the same number at the control stretch.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from torch import nn

from ndt.detect import JumpEvent
from ndt.measure.tracker import HighFrequencyTracker
from ndt.report import (
    InvestigateOptions,
    InvestigationResult,
    Replay,
    RunSource,
    investigate_source,
    rank_events,
)
from ndt.report.investigation import ReplayFn
from ndt.report.moments import detect
from ndt.validate.cases import CASES, PARITY_LAYERS, CaseRun, ParitySpec, ParityTraining, case_rng, run_case


@dataclass(frozen=True)
class Pair:
    """The (detector, metric) a case's report searches, on the case's named layer."""

    detector: str
    metric: str


#: Per case that can be investigated, the benchmark's passing pair on it (``validate.md``: on case B
#: changepoint passes on participation_ratio and cumulative_energy_90; the first is the tables' metric).
PAIRS: dict[str, Pair] = {"B": Pair(detector="changepoint", metric="participation_ratio")}


class MarginLogits(nn.Module):
    """(B, 1) margins f -> (B, 2) logits (-f/2, f/2): class 1 is y = +1, softmax gives sigmoid(f)."""

    def forward(self, margin: torch.Tensor) -> torch.Tensor:
        """(B, 1) -> (B, 2)."""
        return torch.cat([-margin / 2, margin / 2], dim=1)


def with_class_logits(model: nn.Sequential) -> nn.Sequential:
    """`model`'s own modules (same names, shared, not copied), then `MarginLogits` as ``classes``."""
    return nn.Sequential(OrderedDict([*model.named_children(), ("classes", MarginLogits())]))


def tracker_capture() -> dict[str, Any]:
    """The capture settings of a case's tracker, as config keys (`ndt.report` reads ``tracker.*``).

    The cases leave them at `HighFrequencyTracker`'s defaults, read here from its signature so that
    there is one source.
    """
    p = {k: v.default for k, v in inspect.signature(HighFrequencyTracker.__init__).parameters.items()}
    return {
        "center": bool(p["center"]),
        "sequence_reduction": str(p["sequence_reduction"]),
        "conv_reduction": str(p["conv_reduction"]),
        "max_rows": int(p["max_rows"]),
        "hook_point": str(p["hook_point"]),
        "mask_padding": p["padding_mask"] == "auto",
    }


def parity_replay(spec: ParitySpec, seed: int) -> ReplayFn:
    """The `ndt.report.investigation.ReplayFn` of case B's run of `seed` (retrains from the seed)."""

    def replay(
        steps_done: tuple[int, int],
        device: torch.device,
        capture: dict[str, Any],
        layers: Sequence[str] | None,
    ) -> Replay:
        del capture, layers  # a probe run: nothing is captured on the way
        a, b = steps_done
        t0 = time.perf_counter()
        with case_rng(seed):
            training = ParityTraining(spec, seed, control=False)
            for _ in range(a):
                training.step()
            before = copy.deepcopy(training.model)
            for _ in range(a, b):
                training.step()
        n = spec.n_probe
        return Replay(
            before=with_class_logits(before).to(device).eval(),
            after=with_class_logits(training.model).to(device).eval(),
            probe=training.x_test[:n].to(device),
            labels=(training.y_test[:n] > 0).long().to(device),
            checkpoint=0,
            replayed=b,
            seconds=time.perf_counter() - t0,
        )

    return replay


def case_source(run: CaseRun, out_dir: Path, command: str) -> RunSource:
    """A case's run as a `RunSource` (only case B so far).

    Args:
        run: the case's run (not a control), from `run_case` with the case's default spec.
        out_dir: the source's directory (the report is written there).
        command: the command line that writes the report.

    Raises:
        ValueError: a case without a replay, or a control.
    """
    if run.case != "B" or run.control:
        raise ValueError(f"only case B's runs (not controls) can be investigated, got case {run.case}")
    spec = CASES["B"][0]
    assert isinstance(spec, ParitySpec)
    cfg = OmegaConf.create(
        {
            "arch": {"name": "mlp"},
            "dataset": {"name": "parity"},
            "seed": run.seed,
            "trainer": {"max_steps": spec.n_steps, "batch_size": spec.batch_size},
            "tracker": {
                "sampling_frequency": spec.sampling_frequency,
                "probe_size": spec.n_probe,
                **tracker_capture(),
            },
            "protocol": {"detector": PAIRS["B"].detector},
        }
    )
    record = {
        "run_id": f"validate_B__s{run.seed}",
        "arch": "mlp",
        "dataset": "parity",
        "seed": run.seed,
        "family": "mlp",
        "status": "complete",
        "final_accuracy": run.info.get("final_accuracy"),
        "layers": list(PARITY_LAYERS),
    }
    return RunSource(
        path=out_dir,
        record=record,
        cfg=cfg,
        rows=run.rows,
        replay=parity_replay(spec, run.seed),
        command=command,
        layers=PARITY_LAYERS,
    )


def nearest_event(run: CaseRun, pair: Pair) -> tuple[int, JumpEvent] | None:
    """(rank by peak magnitude, event) of the pair's transition event nearest the run's first truth step.

    None when the run has no truth step or the detector finds no transition.
    """
    series = run.series(pair.metric)
    jumps = detect(series.to_numpy(dtype=np.float64), series.index.to_numpy(), pair.detector)
    ranked = rank_events(jumps)
    if not ranked or not run.truth_steps:
        return None
    t = run.truth_steps[0]
    i = min(range(len(ranked)), key=lambda j: (abs(ranked[j].peak_step - t), j))
    return i + 1, ranked[i]


def criterion(summary: dict[str, Any], layer: str) -> dict[str, Any]:
    """The issue's criterion on one report's summary.json (see the module docstring).

    Args:
        summary: a report's summary.json content.
        layer: the layer that should be named (from the case's construction).

    Returns:
        One row: localised, top_own_weights (the layer whose own weights carry the largest share of
        the loss change), the layer's verdict, ablation effect / z / k at the event and at the control
        (NaN without a control), names_layer, larger_than_control, passes.
    """
    causal = summary["causal"]
    event = {r["layer"]: r for r in causal["layers"]}
    control = causal["control"]
    ctrl = {} if control is None else {r["layer"]: r for r in control["layers"]}
    own = [
        (r["share_own_weights"], r["layer"]) for r in causal["layers"] if r["share_own_weights"] is not None
    ]
    row, crow = event[layer], ctrl.get(layer, {})

    def num(v: Any) -> float:
        return float("nan") if v is None else float(v)

    names = causal["localised"] == layer and row["verdict"].startswith("effect")
    larger = bool(crow) and num(row["ablation_effect"]) > num(crow.get("ablation_effect"))
    return {
        "localised": causal["localised"],
        "top_own_weights": max(own)[1] if own else None,
        "share_own_weights": num(row["share_own_weights"]),
        "verdict": row["verdict"],
        "k": row["k"],
        "ablation_effect": num(row["ablation_effect"]),
        "ablation_z": num(row["ablation_z"]),
        "control": None if control is None else f"{control['before']}-{control['after']}",
        "control_k": crow.get("k"),
        "control_ablation_effect": num(crow.get("ablation_effect")),
        "control_ablation_z": num(crow.get("ablation_z")),
        "names_layer": names,
        "larger_than_control": larger,
        "passes": names and larger,
    }


def investigate_case(
    case: str,
    seed: int,
    out: Path,
    cache_dir: Path | None,
    *,
    draws: int = 20,
) -> tuple[dict[str, Any], InvestigationResult | None]:
    """Write the report at a case's transition for one seed and check the criterion on it.

    Args:
        case: a key of `PAIRS`.
        seed: the run's seed.
        out: the benchmark's output directory; the report goes to ``out/investigate/<case>_s<seed>/``.
        cache_dir: the benchmark's run cache (None: train without caching).
        draws: random-direction draws per layer (the report's default).

    Returns:
        (one row: seed, truth step, the event's rank, peak and compared steps, probe accuracy before
        and after, then `criterion`'s columns; the report, or None when the run has no event).

    Raises:
        ValueError: a case without a pair in `PAIRS`.
    """
    if case not in PAIRS:
        raise ValueError(f"case {case!r} cannot be investigated yet; choose from {', '.join(PAIRS)}")
    pair = PAIRS[case]
    run = run_case(case, seed, False, cache_dir)
    layer = run.layer  # the case's named layer: case B's hidden Linear
    head: dict[str, Any] = {
        "case": case,
        "seed": seed,
        "truth": run.truth_steps[0] if run.truth_steps else None,
    }
    found = nearest_event(run, pair)
    if found is None:
        return {**head, "event": None, "passes": False}, None
    rank, event = found
    out_dir = out / "investigate" / f"{case}_s{seed}"
    command = f"python -m ndt.validate --investigate {case} --seed {seed} --out {out}"
    options = InvestigateOptions(
        jump=rank, layer=layer, metric=pair.metric, detector=pair.detector, out=out_dir, draws=draws
    )
    result = investigate_source(case_source(run, out_dir, command), options)
    s = result.summary
    row = {
        **head,
        "jump": rank,
        "event_peak": event.peak_step,
        "compared": f"{s['moments']['before']['step']}-{s['moments']['after']['step']}",
        "replay_ok": s["replay"]["check"]["ok"],
        "acc_before": s["probe"]["accuracy_before"],
        "acc_after": s["probe"]["accuracy_after"],
        **criterion(s, layer),
    }
    return row, result


def investigate_table(
    case: str, seeds: Sequence[int], out: Path, cache_dir: Path | None, log: Any = None
) -> pd.DataFrame:
    """`investigate_case` for each seed, one row each; also written as ``out/investigate/<case>.csv``."""
    rows = []
    for seed in seeds:
        t0 = time.perf_counter()
        row, _ = investigate_case(case, seed, out, cache_dir)
        rows.append(row)
        if log is not None:
            log(
                f"case {case} seed {seed}: report in {time.perf_counter() - t0:.1f} s, passes={row['passes']}"
            )
    table = pd.DataFrame(rows)
    path = out / "investigate" / f"{case}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.drop(columns=["verdict"], errors="ignore").to_csv(path, index=False)
    return table
