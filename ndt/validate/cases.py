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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
        if metric not in self.rows.columns:
            raise ValueError(f"unknown metric {metric!r}; choose a metric column of the rows or 'loss'")
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


@dataclass(frozen=True)
class ParitySpec:
    """Case B: an MLP learns a sparse parity by online SGD (hidden progress, Barak et al. 2022).

    Attributes:
        n_bits, k: inputs x in {-1, +1}^n_bits, label y = x_1 ... x_k.
        width: hidden units of Linear(n_bits, width) - ReLU - Linear(width, 1).
        batch_size: fresh batch per step.
        lr, weight_decay: SGD.
        n_steps: SGD steps (t* is about 1,500 to 2,500 at these sizes).
        sampling_frequency: tracker period, in steps.
        n_test: fixed test points (accuracy every `eval_every` steps).
        eval_every: test-accuracy period, in steps.
        n_probe: probe points (the first of the test points) the tracker measures.
        accuracy_level: t* is the first evaluated step with test accuracy >= this.
        window_lo, window_hi: hit window [window_lo t*, window_hi t*].
    """

    n_bits: int = 50
    k: int = 3
    width: int = 1000
    batch_size: int = 32
    lr: float = 0.1
    weight_decay: float = 0.01
    n_steps: int = 4000
    sampling_frequency: int = 8
    n_test: int = 2000
    eval_every: int = 8
    n_probe: int = 256
    accuracy_level: float = 0.9
    window_lo: float = 0.5
    window_hi: float = 1.1


#: The layers case B measures: the hidden Linear (its named layer) and the output Linear.
PARITY_LAYERS: tuple[str, ...] = ("hidden", "out")


def random_signs(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """(n, d) float32 matrix of independent uniform +-1."""
    return torch.randint(0, 2, (n, d), generator=gen).float() * 2 - 1


def parity_mlp(spec: ParitySpec) -> nn.Sequential:
    """Linear(n_bits, width) - ReLU - Linear(width, 1), named ``hidden``, ``relu``, ``out`` (torch's init)."""
    return nn.Sequential(
        OrderedDict(hidden=nn.Linear(spec.n_bits, spec.width), relu=nn.ReLU(), out=nn.Linear(spec.width, 1))
    )


class ParityTraining:
    """Case B's training, one SGD step at a time: the run (`_run_parity`) and its replay
    (`ndt.validate.investigate`) take the very same steps.

    Build it inside `case_rng` (the model's initialisation draws from torch's global RNG); the data
    come from the run's own generator in a fixed order: test points first, then one batch per step.

    Attributes:
        model: `parity_mlp`, output (B, 1) margins f (prediction sign f).
        x_test, y_test: (n_test, n_bits) fixed test points and their (n_test,) +-1 labels; the first
            `ParitySpec.n_probe` are the tracker's probe.
        steps_done: optimizer steps taken.
    """

    def __init__(self, spec: ParitySpec, seed: int, control: bool) -> None:
        self.spec, self.control = spec, control
        self.gen = _seeded(seed)
        self.model = parity_mlp(spec)
        self.x_test = random_signs(spec.n_test, spec.n_bits, self.gen)
        self.y_test = self.x_test[:, : spec.k].prod(dim=1)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
        self.steps_done = 0

    def step(self) -> float:
        """One SGD step of the hinge loss on a fresh batch; returns the batch's loss (before the step)."""
        spec = self.spec
        x = random_signs(spec.batch_size, spec.n_bits, self.gen)
        # The control's labels are fresh coin flips, independent of x.
        y = random_signs(spec.batch_size, 1, self.gen)[:, 0] if self.control else x[:, : spec.k].prod(dim=1)
        loss = torch.clamp(1 - y * self.model(x)[:, 0], min=0).mean()  # hinge
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.steps_done += 1
        return loss.item()

    @torch.no_grad()
    def test_accuracy(self) -> float:
        """Share of the test points whose label is sign f (f = 0 counts as +1)."""
        pred = torch.where(self.model(self.x_test)[:, 0] >= 0, 1.0, -1.0)
        return float((pred == self.y_test).float().mean())


def _run_parity(spec: ParitySpec, seed: int, control: bool) -> dict[str, Any]:
    training = ParityTraining(spec, seed, control)
    model = training.model
    tracker = HighFrequencyTracker(
        model,
        sampling_frequency=spec.sampling_frequency,
        probe=training.x_test[: spec.n_probe],
        writer=None,
        layers=list(PARITY_LAYERS),
        seed=seed,
        arch="mlp",
        dataset="parity_control" if control else "parity",
    )
    eval_steps, accs = [], []
    with tracker:
        for step in range(spec.n_steps):
            tracker.log(step, training.step())
            if step % spec.eval_every == 0:
                eval_steps.append(step)
                accs.append(training.test_accuracy())
        rows = tracker.get_results()
    t_star = None if control else truth.first_crossing(eval_steps, accs, spec.accuracy_level)
    truth_steps = [] if t_star is None else [t_star]
    windows = [(math.floor(spec.window_lo * t), math.ceil(spec.window_hi * t)) for t in truth_steps]
    return {
        "rows": rows,
        "truth_steps": truth_steps,
        "windows": windows,
        "layer": PARITY_LAYERS[0],
        "min_hits": 1,
        "n_steps": spec.n_steps,
        "curves": pd.DataFrame({"test_accuracy": accs}, index=pd.Index(eval_steps, name="step")),
        "info": {"final_accuracy": accs[-1]},
    }


@dataclass(frozen=True)
class CopySpec:
    """Case C: a 2-layer attention-only transformer learns in-context copying (induction heads).

    A sequence is `n_prefix` uniform random tokens, then a copy of `n_copy` consecutive ones of them
    starting at a random offset in [0, max_offset): the copy is predictable only by finding the current
    token earlier and reading its successor (an induction head), not by position.

    Attributes:
        vocab: token vocabulary size.
        n_prefix, n_copy, max_offset: sequence layout (length n_prefix + n_copy).
        d_model, n_heads, n_layers: the model (no MLPs, no LayerNorm; learned positions).
        batch_size: fresh sequences per step.
        lr, weight_decay: AdamW.
        n_steps: steps (t* is about 900 to 1,100 at these sizes).
        sampling_frequency: tracker period, in steps.
        n_eval: fixed held-out sequences for the repeated-token loss, every `eval_every` steps.
        n_probe: the first `n_probe` of them are the tracker's probe (every token a sample).
        plateau: fractions of the evaluations whose median is the plateau (see `truth.midpoint_crossing`).
        window_rel, window_min: hit window t* +- max(window_rel t*, window_min).
    """

    vocab: int = 64
    n_prefix: int = 16
    n_copy: int = 8
    max_offset: int = 8
    d_model: int = 48
    n_heads: int = 4
    n_layers: int = 2
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    n_steps: int = 1800
    sampling_frequency: int = 4
    n_eval: int = 128
    eval_every: int = 8
    n_probe: int = 32
    plateau: tuple[float, float] = (0.05, 0.15)
    window_rel: float = 0.15
    window_min: int = 50


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate q/k/v/out Linear projections (no biases).

    ``last_attention`` keeps the latest (B, H, S, S) attention pattern for the prefix-matching score.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, d_model) -> (B, S, d_model)."""
        b, s, d = x.shape
        hd = d // self.n_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.n_heads, hd).transpose(1, 2)  # (B, H, S, hd)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
        future = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
        att = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        self.last_attention = att.detach()
        return self.out((att @ v).transpose(1, 2).reshape(b, s, d))


class AttentionOnly(nn.Module):
    """Token + learned position embeddings, `n_layers` residual attention blocks, a linear unembedding."""

    def __init__(self, vocab: int, seq_len: int, d_model: int, n_heads: int, n_layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(seq_len, d_model) * 0.02)
        self.blocks = nn.ModuleList([CausalSelfAttention(d_model, n_heads) for _ in range(n_layers)])
        self.unembed = nn.Linear(d_model, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, S) int64 -> (B, S, vocab) logits."""
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = x + block(x)
        return self.unembed(x)


def copy_batch(
    spec: CopySpec, n: int, gen: torch.Generator, control: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, n_prefix + n_copy) tokens and (n,) copy offsets; the control's copy is fresh tokens."""
    prefix = torch.randint(0, spec.vocab, (n, spec.n_prefix), generator=gen)
    offset = torch.randint(0, spec.max_offset, (n,), generator=gen)
    if control:
        tail = torch.randint(0, spec.vocab, (n, spec.n_copy), generator=gen)
    else:
        tail = prefix.gather(1, offset[:, None] + torch.arange(spec.n_copy)[None, :])
    return torch.cat([prefix, tail], dim=1), offset


def repeated_loss(logits: torch.Tensor, tokens: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """Mean cross-entropy on the copy's tokens after its first (those an induction head can predict).

    Args:
        logits: (B, S - 1, V) predictions for tokens[:, 1:].
        tokens: (B, S).
        n_prefix: copy starts at this position.
    """
    pred = logits[:, n_prefix:]  # predicts tokens n_prefix + 1 .. S - 1
    return nn.functional.cross_entropy(
        pred.reshape(-1, pred.shape[-1]), tokens[:, n_prefix + 1 :].reshape(-1)
    )


def prefix_matching(
    attention: torch.Tensor, offset: torch.Tensor, n_prefix: int, n_copy: int
) -> torch.Tensor:
    """Per head, mean attention from a copy token to the successor of its earlier occurrence.

    The copy token at position n_prefix + m (m >= 0) equals the prefix token at offset + m; an induction
    head attends to its successor, position offset + m + 1 (never after the query: offset < n_prefix).

    Args:
        attention: (B, H, S', S') attention of the layer (S' = sequence length fed to the model).
        offset: (B,) copy offsets.
        n_prefix, n_copy: sequence layout.

    Returns:
        (H,) scores in [0, 1].
    """
    m = torch.arange(min(n_copy, attention.shape[-1] - n_prefix))  # copy positions the model saw
    key = offset[:, None] + m[None, :] + 1  # (B, M)
    b_idx = torch.arange(attention.shape[0])[:, None].expand_as(key)
    q_idx = (n_prefix + m)[None, :].expand_as(key)
    weights = attention[b_idx, :, q_idx, key]  # (B, M, H): advanced indices first, then the head axis
    return weights.mean(dim=(0, 1))


def _run_copying(spec: CopySpec, seed: int, control: bool) -> dict[str, Any]:
    gen = _seeded(seed)
    seq_len = spec.n_prefix + spec.n_copy
    model = AttentionOnly(spec.vocab, seq_len - 1, spec.d_model, spec.n_heads, spec.n_layers)
    eval_tokens, eval_offset = copy_batch(spec, spec.n_eval, gen, control)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    tracker = HighFrequencyTracker(
        model,
        sampling_frequency=spec.sampling_frequency,
        probe=eval_tokens[: spec.n_probe, :-1],
        writer=None,
        sequence_reduction="tokens",
        seed=seed,
        arch="attn_only",
        dataset="copy_control" if control else "copy",
    )
    last = model.blocks[-1]
    assert isinstance(last, CausalSelfAttention)
    eval_steps, rep_losses, prefix_scores = [], [], []
    with tracker:
        for step in range(spec.n_steps):
            tokens, _ = copy_batch(spec, spec.batch_size, gen, control)
            logits = model(tokens[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, spec.vocab), tokens[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tracker.log(step, loss.item())
            if step % spec.eval_every == 0:
                with torch.no_grad():
                    eval_logits = model(eval_tokens[:, :-1])
                    rep = repeated_loss(eval_logits, eval_tokens, spec.n_prefix)
                    assert last.last_attention is not None
                    score = prefix_matching(last.last_attention, eval_offset, spec.n_prefix, spec.n_copy)
                eval_steps.append(step)
                rep_losses.append(float(rep))
                prefix_scores.append(float(score.max()))
        rows = tracker.get_results()
    t_star, plateau, floor = truth.midpoint_crossing(eval_steps, rep_losses, plateau=spec.plateau)
    # The control's loss does not fall by much; a crossing there would be noise, not a transition.
    truth_steps = [] if control or t_star is None else [t_star]
    return {
        "rows": rows,
        "truth_steps": truth_steps,
        "windows": [truth.window(t, spec.window_rel, spec.window_min) for t in truth_steps],
        "layer": f"blocks.{spec.n_layers - 1}.out",
        "min_hits": 1,
        "n_steps": spec.n_steps,
        "curves": pd.DataFrame(
            {"repeated_loss": rep_losses, "prefix_matching": prefix_scores},
            index=pd.Index(eval_steps, name="step"),
        ),
        "info": {
            "plateau_loss": plateau,
            "floor_loss": floor,
            "final_prefix_matching": prefix_scores[-1],
            "final_repeated_loss": rep_losses[-1],
        },
    }


@dataclass(frozen=True)
class GrokkingSpec:
    """Case D (slow tier): modular addition grokked by a 1-layer transformer (Nanda et al. 2023 recipe).

    Inputs are the tokens (a, b, "="), a, b in [0, p); the label (a + b) mod p is read at "=". One
    attention block (d_head = d_model / n_heads) and one ReLU MLP, no LayerNorm, learned positions;
    full-batch AdamW with weight decay 1 and a 10-step linear warm-up. The control trains on 90% of the
    pairs and generalises early.

    Attributes:
        p: the modulus.
        train_frac: share of the p^2 pairs in the training set (the control: `control_train_frac`).
        d_model, n_heads, d_mlp: the model.
        lr, weight_decay, betas, warmup: AdamW and its warm-up (epochs).
        n_epochs: full-batch steps (Nanda et al. see t_g near 10,000 at train_frac 0.3; not yet measured here).
        sampling_frequency: tracker period, in epochs.
        eval_every: test-loss period, in epochs.
        n_probe: pairs (from all p^2) in the tracker's probe.
        test_loss_level: t_g is the first evaluated epoch with test loss below this.
        window_rel: hit window t_g +- window_rel t_g.
    """

    p: int = 113
    train_frac: float = 0.3
    control_train_frac: float = 0.9
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    lr: float = 1e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    warmup: int = 10
    n_epochs: int = 20000
    sampling_frequency: int = 40
    eval_every: int = 20
    n_probe: int = 512
    test_loss_level: float = 1.0
    window_rel: float = 0.10


class Grokker(nn.Module):
    """One attention block and one ReLU MLP on a residual stream; logits at the last position."""

    def __init__(self, vocab: int, n_out: int, seq_len: int, d_model: int, n_heads: int, d_mlp: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(seq_len, d_model) / math.sqrt(d_model))
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.mlp_in = nn.Linear(d_model, d_mlp)
        self.mlp_out = nn.Linear(d_mlp, d_model)
        self.unembed = nn.Linear(d_model, n_out, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 3) int64 -> (B, n_out) logits read at the last position."""
        x = self.embed(tokens) + self.pos
        # With one block the MLP at positions 0 and 1 never reaches the logits: apply it at "=" only
        # (the same function, a third of the MLP's cost; the tracker sees the "=" position's MLP).
        x = (x + self.attn(x))[:, -1]
        x = x + self.mlp_out(torch.relu(self.mlp_in(x)))
        return self.unembed(x)


def _run_grokking(spec: GrokkingSpec, seed: int, control: bool) -> dict[str, Any]:
    # 20,000 full-batch epochs: hours on one CPU core, about a minute on a GPU (used when present).
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = _seeded(seed)
    p = spec.p
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    tokens = torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], dim=1)  # "=" is token p
    labels = (tokens[:, 0] + tokens[:, 1]) % p
    perm = torch.randperm(p * p, generator=gen)
    n_train = round((spec.control_train_frac if control else spec.train_frac) * p * p)
    train, test = perm[:n_train], perm[n_train:]
    probe = tokens[torch.randperm(p * p, generator=gen)[: spec.n_probe]]
    model = Grokker(p + 1, p, 3, spec.d_model, spec.n_heads, spec.d_mlp)
    model.to(device)
    tokens, labels, train, test = tokens.to(device), labels.to(device), train.to(device), test.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, betas=spec.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: min(1.0, (e + 1) / spec.warmup))
    tracker = HighFrequencyTracker(
        model,
        sampling_frequency=spec.sampling_frequency,
        probe=probe,
        writer=None,
        sequence_reduction="tokens",
        seed=seed,
        arch="grokker",
        dataset="modadd_control" if control else "modadd",
    )
    eval_steps, test_losses, test_accs = [], [], []
    with tracker:
        for epoch in range(spec.n_epochs):
            loss = nn.functional.cross_entropy(model(tokens[train]), labels[train])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tracker.log(epoch, loss.item())
            if epoch % spec.eval_every == 0:
                with torch.no_grad():
                    logits = model(tokens[test])
                eval_steps.append(epoch)
                test_losses.append(float(nn.functional.cross_entropy(logits, labels[test])))
                test_accs.append(float((logits.argmax(-1) == labels[test]).float().mean()))
        rows = tracker.get_results()
    t_g = truth.first_crossing(eval_steps, test_losses, spec.test_loss_level, above=False)
    truth_steps = [] if t_g is None else [t_g]
    return {
        "rows": rows,
        "truth_steps": truth_steps,
        "windows": [truth.window(t, spec.window_rel, 0) for t in truth_steps],
        "layer": "mlp_in",
        "min_hits": 1,
        "n_steps": spec.n_epochs,
        "curves": pd.DataFrame(
            {"test_loss": test_losses, "test_accuracy": test_accs}, index=pd.Index(eval_steps, name="step")
        ),
        "info": {"final_test_loss": test_losses[-1], "final_test_accuracy": test_accs[-1]},
    }


# ---------------------------------------------------------------------------------------------- registry

#: case -> (default spec, runner(spec, seed, control) -> CaseRun fields).
CASES: dict[str, tuple[Any, Callable[[Any, int, bool], dict[str, Any]]]] = {
    "A": (StaircaseSpec(), _run_staircase),
    "B": (ParitySpec(), _run_parity),
    "C": (CopySpec(), _run_copying),
    "D": (GrokkingSpec(), _run_grokking),
}

#: Cases in the fast tier (`make validate`); the rest run only in `make validate-slow`.
FAST_CASES: tuple[str, ...] = ("A", "B", "C")


def _cache_path(cache_dir: Path, case: str, seed: int, control: bool, spec: Any) -> Path:
    blob = json.dumps({"v": CACHE_VERSION, "case": case, "spec": asdict(spec)}, sort_keys=True)
    key = hashlib.sha1(blob.encode()).hexdigest()[:10]
    return cache_dir / f"{case}__s{seed}__{'control' if control else 'run'}__{key}"


def _loss_from_rows(rows: pd.DataFrame) -> pd.Series:
    loss = rows.groupby("step", sort=True)["loss"].first()
    loss.name = "loss"
    return loss


@contextmanager
def case_rng(seed: int) -> Iterator[None]:
    """Inside the block, torch's global RNG is seeded with `seed` and one CPU thread is used; both are
    restored on exit. A case's run and its replay (`ndt.validate.investigate`) train inside it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads only contend for the cores
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # modules initialised by torch's global RNG are seeded too
            yield
    finally:
        torch.set_num_threads(threads)


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
    t0 = time.perf_counter()
    with case_rng(seed):
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
