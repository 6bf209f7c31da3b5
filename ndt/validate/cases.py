"""The benchmark's cases: small real training runs with a transition whose step is known in the run.

Every case trains a model on CPU with one seed, measures it with ndt's own `HighFrequencyTracker`
(on a fixed probe batch, every ``sampling_frequency`` steps, after the optimizer step), and computes its
ground truth from quantities recorded in the same run (`ndt.validate.truth`). A *control* is the matched
run without the transition.

=====  ===========================  ==============================================  ====================
case   run                          truth (per run)                                 control
=====  ===========================  ==============================================  ====================
A      deep-linear staircase        t_a: u_a^T W2 W1 v_a first >= s_a / 2, a=1..3   rank-1 target diag(6)
B      sparse parity (n 50, k 3)    t*: test accuracy first >= 0.9                  labels independent of x
C      in-context copying           t*: repeated-token loss crosses its midpoint    copy replaced by fresh
D      grokking (mod 113, slow)     t_g: first epoch with test loss < 1             90% train data
=====  ===========================  ==============================================  ====================

`run_case` trains (or reads the cache) and returns a `CaseRun`. The cache key holds the case's spec
(`CASES`), so changing a size retrains and re-scoring a detector never does.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ndt.measure.tracker import HighFrequencyTracker
from ndt.validate import truth

#: Bump when a case's code changes in a way its spec does not show (invalidates every cache entry).
CACHE_VERSION = 1


@dataclass
class CaseRun:
    """One training run of a case, with its measurements and its ground truth.

    Attributes:
        case: the case letter ("A".."D").
        seed: the run's seed (everything in the run is drawn from it).
        control: True for the matched run without the transition.
        rows: the tracker's rows, one per (step, layer) (columns as in `ndt.storage.schema`).
        loss: training loss at the measured steps (pd.Series indexed by step).
        truth_steps: the transitions' steps, from the run itself (sorted).
        windows: (start, end) hit window of each truth step, inclusive, in steps.
        layer: the case's named layer (a qualified module name present in ``rows.layer``).
        min_hits: windows a run must hit to count as hit.
        n_steps: optimizer steps taken.
        curves: the truth quantities over steps (index step; e.g. mode strengths, test accuracy).
        info: scalars worth reporting (e.g. final accuracy, prefix-matching score, train seconds).
    """

    case: str
    seed: int
    control: bool
    rows: pd.DataFrame
    loss: pd.Series
    truth_steps: list[int]
    windows: list[tuple[int, int]]
    layer: str
    min_hits: int
    n_steps: int
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    info: dict[str, Any] = field(default_factory=dict)

    def series(self, metric: str, layer: str | None = None) -> pd.Series:
        """`metric` of `layer` (default: the named layer) over steps; metric "loss" gives `loss`."""
        if metric == "loss":
            return self.loss
        name = self.layer if layer is None else layer
        df = self.rows[self.rows["layer"] == name]
        if df.empty:
            raise KeyError(
                f"layer {name!r} is not in the rows; layers: {sorted(self.rows['layer'].unique())}"
            )
        return df.set_index("step")[metric].sort_index()

    @property
    def layers(self) -> list[str]:
        """The measured layers, in model order."""
        order = self.rows.drop_duplicates("layer").sort_values("layer_index")
        return [str(x) for x in order["layer"]]


# ---------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class StaircaseSpec:
    """Case A: a 16-16-16 bias-free linear net learns y = U diag(s) V^T x by full-batch GD.

    Attributes:
        dim: input, hidden and output width.
        singular_values: the target's nonzero singular values (the control keeps only the first).
        n_samples: training inputs, whitened so that X^T X / n = I exactly (also the probe).
        init_std: SD of every initial weight (small: the modes are learnt one by one).
        lr: gradient-descent learning rate on 1/2 mean ||y - W2 W1 x||^2.
        n_steps: GD steps.
        sampling_frequency: tracker measurement period, in steps.
        window_rel, window_min: hit window t +- max(window_rel t, window_min).
        min_hits: of the 3 modes, windows a run must hit.
    """

    dim: int = 16
    singular_values: tuple[float, ...] = (6.0, 2.0, 0.667)
    n_samples: int = 128
    init_std: float = 1e-4
    lr: float = 0.01
    n_steps: int = 3000
    sampling_frequency: int = 5
    window_rel: float = 0.10
    window_min: int = 25
    min_hits: int = 2


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def random_orthogonal(n: int, gen: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(n, n) Haar-random orthogonal matrix (QR of a Gaussian with the signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=dtype))
    return q * torch.sign(torch.diagonal(r))[None, :]


def whitened_gaussian(
    n: int, d: int, gen: torch.Generator, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """(n, d) Gaussian inputs transformed so that X^T X / n = I exactly (needs n >= d)."""
    x = torch.randn(n, d, generator=gen, dtype=dtype)
    cov = x.T @ x / n
    evals, evecs = torch.linalg.eigh(cov)
    return x @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T


def deep_linear(dim: int, init_std: float, gen: torch.Generator) -> nn.Sequential:
    """Two bias-free (dim, dim) Linear layers, named ``w1`` and ``w2``, float64, weights N(0, init_std^2)."""
    model = nn.Sequential(
        OrderedDict(w1=nn.Linear(dim, dim, bias=False), w2=nn.Linear(dim, dim, bias=False))
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * init_std)
    return model


def train_staircase(
    model: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    n_steps: int,
    u: torch.Tensor,
    v: torch.Tensor,
    tracker: HighFrequencyTracker | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Full-batch GD on 1/2 mean_n ||y_n - W2 W1 x_n||^2, recording the mode strengths after each step.

    Args:
        model: `deep_linear` net.
        x, y: (n, d) inputs and targets.
        lr: learning rate.
        n_steps: steps.
        u, v: (d, r) target singular vectors whose strengths u_a^T W2 W1 v_a are recorded.
        tracker: logs each step after the optimizer step (None: no measurement).

    Returns:
        (strengths (n_steps, r), loss (n_steps,)): strength after step t, loss of step t's forward.
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    w1, w2 = model[0].weight, model[1].weight  # (h, d_in), (d_out, h)
    assert isinstance(w1, torch.Tensor) and isinstance(w2, torch.Tensor)
    strengths = np.empty((n_steps, u.shape[1]))
    losses = np.empty(n_steps)
    for step in range(n_steps):
        loss = 0.5 * ((model(x) - y) ** 2).sum(dim=1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            strengths[step] = torch.einsum("or,oi,ir->r", u, w2 @ w1, v).numpy()
        losses[step] = loss.item()
        if tracker is not None:
            tracker.log(step, losses[step])
    return strengths, losses


def _run_staircase(spec: StaircaseSpec, seed: int, control: bool) -> dict[str, Any]:
    gen = _seeded(seed)
    d = spec.dim
    u_full, v_full = random_orthogonal(d, gen), random_orthogonal(d, gen)
    svals = spec.singular_values[:1] if control else spec.singular_values
    r = len(svals)
    u, v = u_full[:, :r], v_full[:, :r]
    target = u @ torch.diag(torch.tensor(svals, dtype=torch.float64)) @ v.T  # (d_out, d_in)
    x = whitened_gaussian(spec.n_samples, d, gen)
    y = x @ target.T
    model = deep_linear(d, spec.init_std, gen)
    tracker = HighFrequencyTracker(
        model,
        sampling_frequency=spec.sampling_frequency,
        probe=x,
        writer=None,
        seed=seed,
        arch="deep_linear",
        dataset="staircase_control" if control else "staircase",
    )
    with tracker:
        strengths, _ = train_staircase(model, x, y, spec.lr, spec.n_steps, u, v, tracker)
        rows = tracker.get_results()
    steps = np.arange(spec.n_steps)
    times = truth.staircase_times(steps, strengths, svals)
    truth_steps = [t for t in times if t is not None]
    curves = pd.DataFrame(
        strengths, index=pd.Index(steps, name="step"), columns=[f"mode{a + 1}" for a in range(r)]
    )
    return {
        "rows": rows,
        "truth_steps": truth_steps,
        "windows": [truth.window(t, spec.window_rel, spec.window_min) for t in truth_steps],
        "layer": "w1",
        "min_hits": min(spec.min_hits, len(svals)),
        "n_steps": spec.n_steps,
        "curves": curves[curves.index % spec.sampling_frequency == 0],
        "info": {
            "mode_times": [-1 if t is None else t for t in times],
            "initial_strengths": strengths[0].tolist(),
        },
    }


# ---------------------------------------------------------------------------------------------- registry

#: case -> (default spec, runner(spec, seed, control) -> CaseRun fields).
CASES: dict[str, tuple[Any, Callable[[Any, int, bool], dict[str, Any]]]] = {
    "A": (StaircaseSpec(), _run_staircase),
}

#: Cases in the fast tier (`make validate`); the rest run only in `make validate-slow`.
FAST_CASES: tuple[str, ...] = ("A",)


def _cache_path(cache_dir: Path, case: str, seed: int, control: bool, spec: Any) -> Path:
    blob = json.dumps({"v": CACHE_VERSION, "case": case, "spec": asdict(spec)}, sort_keys=True)
    key = hashlib.sha1(blob.encode()).hexdigest()[:10]
    return cache_dir / f"{case}__s{seed}__{'control' if control else 'run'}__{key}"


def _loss_from_rows(rows: pd.DataFrame) -> pd.Series:
    loss = rows.groupby("step", sort=True)["loss"].first()
    loss.name = "loss"
    return loss


def run_case(
    case: str, seed: int, control: bool = False, cache_dir: Path | str | None = None, spec: Any = None
) -> CaseRun:
    """Train one run of `case` (or read it from `cache_dir`) and return it with its ground truth.

    Args:
        case: a key of `CASES` ("A", "B", "C", "D").
        seed: the run's seed.
        control: the matched run without the transition.
        cache_dir: a directory for cached runs (rows, curves, truth); None trains without caching.
        spec: the case's spec (default: the one in `CASES`); part of the cache key.

    Raises:
        ValueError: an unknown case.
    """
    if case not in CASES:
        raise ValueError(f"unknown case {case!r}; choose from {', '.join(CASES)}")
    default_spec, runner = CASES[case]
    spec = default_spec if spec is None else spec
    path = None
    if cache_dir is not None:
        path = _cache_path(Path(cache_dir), case, seed, control, spec)
        if (path / "meta.json").exists():
            return _read_cached(path)
    torch.set_num_threads(1)  # tiny models: threads only contend for the 2 cores
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # modules initialised by torch's global RNG are seeded too
        fields_ = runner(spec, seed, control)
    fields_["info"]["train_seconds"] = round(time.perf_counter() - t0, 2)
    run = CaseRun(case=case, seed=seed, control=control, loss=_loss_from_rows(fields_["rows"]), **fields_)
    if path is not None:
        _write_cached(path, run)
    return run


def _write_cached(path: Path, run: CaseRun) -> None:
    path.mkdir(parents=True, exist_ok=True)
    run.rows.to_parquet(path / "rows.parquet")
    run.curves.to_parquet(path / "curves.parquet")
    meta = {
        "case": run.case,
        "seed": run.seed,
        "control": run.control,
        "truth_steps": run.truth_steps,
        "windows": [list(w) for w in run.windows],
        "layer": run.layer,
        "min_hits": run.min_hits,
        "n_steps": run.n_steps,
        "info": run.info,
    }
    # Written last: its presence marks a complete entry.
    (path / "meta.json").write_text(json.dumps(meta, indent=1, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _read_cached(path: Path) -> CaseRun:
    meta = json.loads((path / "meta.json").read_text())
    rows = pd.read_parquet(path / "rows.parquet")
    return CaseRun(
        case=meta["case"],
        seed=meta["seed"],
        control=meta["control"],
        rows=rows,
        loss=_loss_from_rows(rows),
        truth_steps=[int(t) for t in meta["truth_steps"]],
        windows=[(int(a), int(b)) for a, b in meta["windows"]],
        layer=meta["layer"],
        min_hits=int(meta["min_hits"]),
        n_steps=int(meta["n_steps"]),
        curves=pd.read_parquet(path / "curves.parquet"),
        info=meta["info"],
    )


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else x
