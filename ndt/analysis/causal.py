"""Causal tests between two states of a network: does the change at a layer matter for what it does?

Given the model *before* and *after* a moment of training (e.g. a dimensionality jump) and a labelled
probe batch, three interventions, each measured as a change of the probe's cross-entropy loss and
accuracy (eval mode, no grad):

1. **Output patching** (`patch_outputs`): run *after* with one layer's output replaced by *before*'s
   output on the same inputs (and the reverse: *before* with *after*'s output). Everything downstream
   of the layer is recomputed; everything upstream is replaced, so the effect grows along the network
   and the *first* layer whose patch recovers most of the change localises it: the change lies at that
   layer or between it and the previous measured layer (`localise`).
2. **Weight patching** (same table): *after* with one layer's own parameters set back to *before*'s.
   It isolates that layer's own change, which output patching cannot.
3. **Direction ablation** (`ablate_directions`): the subspace the moment added to a layer (`added_directions`:
   the top-k principal directions of the after-activations outside the before-activations' principal
   subspace) is mean-ablated at the after-step: each sample's component along those directions is
   replaced by its probe mean (so the layer's mean output is kept; zeroing would also shift it). The
   effect is compared with mean-ablating k random orthonormal directions of the same layer
   (``n_random`` seeded draws): z = (effect - mean(random)) / sd(random).

Layer outputs are read on their feature axis: the last axis of (B, F) and (B, S, F) outputs, the
channel axis of (B, C, *spatial) conv outputs (each position then counts as a sample). Tuple outputs
(e.g. ``nn.MultiheadAttention``'s) are patched and ablated in their first element. When the model
declares its padding (``model.padding_mask(x)``, as ndt's Transformer and GPT2LM do), padding tokens of
(B, S, F) outputs are left out of the directions and of the probe means (they are still patched).

Loss and accuracy are `ndt.models.objective`'s, the training loss: for a classifier over the probe's
examples, for a language model over its non-padding next-token positions (``class_accuracy`` is then
per target token id).

Every forward runs in eval mode, without gradients and with PyTorch's fused transformer fast path off
(`_unfused`): the base behaviour and each intervention then use the same kernels. Cost for L layers:
at most 2 + L (4 + n_random) forwards of the probe (`causal_forwards`): 506 for ResNet-18's 21 measured
layers at the default 20 draws, about 0.8 s each for a 160-image probe on the 2-core CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from ndt.data.spec import IGNORE_INDEX
from ndt.models.objective import task_loss, token_view

#: A layer's ablation counts as significant above this z (random directions give |z| ~ 1).
Z_SIGNIFICANT = 3.0
#: A patch "recovers" the change when it moves the loss by at least this share of the total change.
RECOVERED_SHARE = 0.5
#: Shares of a smaller total change (nats of probe loss) say nothing: a 0.03-nat change made patch shares
#: of -250% to +450% on a real run (each layer's patch moved the loss more than the whole change).
MIN_TOTAL_CHANGE = 0.05


@dataclass(frozen=True)
class Behaviour:
    """What a model does on the probe.

    Attributes:
        loss: mean cross-entropy (nats), over examples or next-token positions (`task_loss`).
        accuracy: top-1 accuracy in [0, 1] (of examples, or of non-padding positions).
        class_accuracy: (classes,) accuracy per true class (NaN for a class absent from the probe); for
            a language model per target token id.
    """

    loss: float
    accuracy: float
    class_accuracy: np.ndarray


def _module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        raise KeyError(
            f"no module named {name!r} in {type(model).__name__}; available: {[n for n in modules if n]}"
        )
    return modules[name]


def _has_parameters(model: nn.Module, name: str) -> bool:
    """Whether layer `name` has parameters of its own (its own-weights patch is then run)."""
    return any(True for _ in _module(model, name).parameters())


def _first(output: object) -> torch.Tensor:
    """The tensor a layer's output stands for (the first element of a tuple output)."""
    out = output[0] if isinstance(output, tuple | list) else output
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"layer output is {type(out).__name__}, not a tensor")
    return out


def _with_first(output: object, new: torch.Tensor) -> object:
    """`output` with its tensor replaced by `new` (tuples keep their other elements)."""
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    return new


@contextmanager
def replaced_output(
    model: nn.Module, layer: str, fn: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Inside the block, `layer`'s output is ``fn(output)`` (a forward hook, removed on exit)."""
    handle = _module(model, layer).register_forward_hook(
        lambda _m, _i, out: _with_first(out, fn(_first(out)))
    )
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _unfused() -> Iterator[None]:
    """PyTorch's fused transformer fast path off inside the block (restored after).

    nn.TransformerEncoderLayer takes it in eval mode only when none of its modules has a hook, and
    every intervention here attaches one: with it on, the kernels of a forward would depend on which
    layers are hooked, and a patch that changes nothing would move the loss by their rounding (~5e-9
    nats on the study's transformer).
    """
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


@contextmanager
def _recorded(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Inside the block, each forward stores a copy of every layer's (first) output; on exit, raise
    when a layer did not run."""
    store: dict[str, torch.Tensor] = {}
    handles = [
        _module(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: store.__setitem__(name, _first(out).detach().clone())
        )
        for name in layers
    ]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in layers if n not in store]
    if missing:
        raise ValueError(f"layers {missing} did not run in the forward pass; choose layers the model calls")


@torch.no_grad()
def layer_outputs(model: nn.Module, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Each layer's full output tensor on `x` (eval mode; the model's train flag is restored)."""
    was_training = model.training
    with _recorded(model, layers) as store, _unfused():
        try:
            model.eval()
            model(x)
        finally:
            model.train(was_training)
    return store


def observe(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers: Sequence[str]
) -> tuple[Behaviour, dict[str, torch.Tensor]]:
    """`behaviour` and `layer_outputs` of one forward (the same values as the two calls, half the cost)."""
    with _recorded(model, layers) as store:
        beh = behaviour(model, x, y)
    return beh, store


@torch.no_grad()
def behaviour(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_classes: int | None = None) -> Behaviour:
    """Loss, accuracy and per-class accuracy of `model` on (x, y), in eval mode (flag restored).

    Args:
        model: a classifier returning (B, classes) logits, or a language model returning (B, S, V).
        x: (B, ...) inputs.
        y: (B,) integer classes, or (B, S) next-token targets (`IGNORE_INDEX` at padding).
        n_classes: length of ``class_accuracy`` (default: the logits' width).
    """
    was_training = model.training
    try:
        model.eval()
        with _unfused():  # the same kernels whichever layers an intervention hooks
            logits = model(x)
    finally:
        model.train(was_training)
    # Classifier logits in float64 (a few values); a language model's (B, S, V) stay float32: in
    # float64 160 x 64 x 5,002 logits alone would take 410 MB per call.
    if logits.ndim == 2:
        logits = logits.double()
    y = y.to(logits.device)
    loss = float(task_loss(logits, y))
    flat, targets = token_view(logits, y)
    valid = targets != IGNORE_INDEX
    pred = flat.argmax(dim=-1)[valid].cpu().numpy()
    labels = targets[valid].cpu().numpy()
    k = n_classes or flat.shape[1]
    totals = np.bincount(labels, minlength=k).astype(np.float64)
    hits = np.bincount(labels[pred == labels], minlength=k).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(totals > 0, hits / totals, np.nan)
    acc = float((pred == labels).mean()) if labels.size else float("nan")
    return Behaviour(loss=loss, accuracy=acc, class_accuracy=per_class)


def feature_matrix(output: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
    """(n, F) float64 rows of a layer output on its feature axis (see the module docstring).

    Args:
        output: (B, F), (B, S, F) or (B, C, *spatial).
        padding: (B, S) bool, True at padding: those tokens of a (B, S, F) output are left out.
    """
    if output.ndim == 2:
        return output.double()
    if output.ndim == 3:
        rows = output.reshape(-1, output.shape[-1]).double()  # (B, S, F): every token a row
        if padding is not None and tuple(padding.shape) == tuple(output.shape[:2]):
            rows = rows[~padding.reshape(-1).to(rows.device)]
        return rows
    return output.movedim(1, -1).reshape(-1, output.shape[1]).double()  # (B, C, *spatial): every position


def declared_padding(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The model's own (B, S) padding mask of `x` (True at padding), or None if it declares none."""
    fn = getattr(model, "padding_mask", None)
    if not callable(fn) or isinstance(fn, nn.Module):
        return None
    mask = fn(x)
    return None if mask is None else mask.to(torch.bool)


def _feature_axis(output: torch.Tensor) -> int:
    return 1 if output.ndim >= 4 else output.ndim - 1


def mean_ablate(output: torch.Tensor, directions: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Replace each sample's component along `directions` by `means`.

    Args:
        output: a layer output (feature axis as in the module docstring).
        directions: (k, F) orthonormal rows.
        means: (k,) the probe mean of each component.
    """
    axis = _feature_axis(output)
    moved = output.movedim(axis, -1)
    d = directions.to(moved.dtype)
    coef = moved @ d.T  # (..., k)
    ablated = moved - (coef - means.to(moved.dtype)) @ d
    return ablated.movedim(-1, axis)


def added_directions(before: np.ndarray, after: np.ndarray, k: int, energy: float = 0.99) -> np.ndarray:
    """The top-k principal directions of `after` outside the principal subspace of `before`.

    The before-subspace is spanned by the fewest principal directions of the centred `before` holding
    `energy` of its variance; the centred `after` is projected onto its orthogonal complement and the
    top-k right singular vectors of what remains are returned.

    Args:
        before, after: (n, F) activations of one layer on the same probe.
        k: number of directions, 1 <= k <= F.
        energy: share of the before-variance whose subspace counts as already present.

    Returns:
        (k, F) orthonormal rows.
    """
    n_features = before.shape[1]
    if not 1 <= k <= n_features:
        raise ValueError(f"k must be in 1..{n_features} (the layer's width), got {k}")
    # Through the (F, F) covariances: rows can be many (every position of a conv output is one).
    b = before - before.mean(axis=0)
    a = after - after.mean(axis=0)
    lam_b, vec_b = np.linalg.eigh(b.T @ b)
    lam_b, vec_b = lam_b[::-1].clip(min=0.0), vec_b[:, ::-1]
    total = float(lam_b.sum())
    r = 0
    if total > 0:
        r = min(int(np.searchsorted(np.cumsum(lam_b) / total, energy) + 1), n_features - k)
    basis = vec_b[:, :r].T  # (r, F) the before-subspace
    resid = a - (a @ basis.T) @ basis
    _, vec_r = np.linalg.eigh(resid.T @ resid)
    dirs = vec_r[:, ::-1][:, :k].T
    # Re-orthogonalise against the before-subspace: when the residual is (numerically) zero its
    # eigenvectors are arbitrary and may lie inside it.
    dirs = dirs - (dirs @ basis.T) @ basis
    q, _ = np.linalg.qr(dirs.T)
    return np.asarray(q.T[:k])


def random_directions(n_features: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """(k, F) random orthonormal rows (QR of a Gaussian matrix: uniform on the Stiefel manifold)."""
    q, r = np.linalg.qr(rng.standard_normal((n_features, k)))
    return np.asarray((q * np.sign(np.diag(r))).T)


def _ablated_behaviour(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, layer: str, output: torch.Tensor, dirs: np.ndarray
) -> Behaviour:
    d = torch.as_tensor(dirs, dtype=torch.float64, device=output.device)
    rows = feature_matrix(output, declared_padding(model, x))
    means = rows.mean(dim=0) @ d.T  # (k,) probe mean of each component (over non-padding tokens)
    with replaced_output(model, layer, lambda out: mean_ablate(out, d, means).to(out.dtype)):
        return behaviour(model, x, y)


def ablate_directions(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layer: str,
    directions: np.ndarray,
    *,
    n_random: int = 20,
    seed: int = 0,
    base: Behaviour | None = None,
    output: torch.Tensor | None = None,
) -> dict[str, float | np.ndarray]:
    """Mean-ablate `directions` of `layer` and compare with random directions of the same number.

    Args:
        model: the network (after-step).
        x, y: the probe.
        layer: module name.
        directions: (k, F) orthonormal rows in the layer's feature space.
        n_random: random draws (>= 2).
        seed: seed of the random directions.
        base, output: the model's `behaviour` on `x` and `layer`'s output there, when the caller has
            them already (`observe`): two forwards fewer.

    Returns:
        {"effect": loss increase from ablating `directions`, "accuracy_drop", "random_mean",
        "random_sd", "z", "class_accuracy_change": (classes,) array, "k"}.
    """
    if n_random < 2:
        raise ValueError(f"n_random must be >= 2 to estimate the spread of random ablations, got {n_random}")
    if base is None or output is None:
        base, outputs = observe(model, x, y, [layer])
        output = outputs[layer]
    ablated = _ablated_behaviour(model, x, y, layer, output, directions)
    rng = np.random.default_rng(seed)
    k, n_features = directions.shape
    rand = np.array(
        [
            _ablated_behaviour(model, x, y, layer, output, random_directions(n_features, k, rng)).loss
            - base.loss
            for _ in range(n_random)
        ]
    )
    effect = ablated.loss - base.loss
    sd = float(rand.std(ddof=1))
    # A floor on the spread: identical random effects (e.g. a layer the output ignores) would divide by 0.
    z = (effect - float(rand.mean())) / max(sd, 1e-12 * max(1.0, abs(effect)))
    return {
        "effect": effect,
        "accuracy_drop": base.accuracy - ablated.accuracy,
        "random_mean": float(rand.mean()),
        "random_sd": sd,
        "z": float(z),
        "class_accuracy_change": ablated.class_accuracy - base.class_accuracy,
        "k": k,
    }


@contextmanager
def _weights_from(target: nn.Module, source: nn.Module, layer: str) -> Iterator[None]:
    """Inside the block, `target`'s `layer` holds `source`'s parameters and buffers (restored after)."""
    t_mod, s_mod = _module(target, layer), _module(source, layer)
    saved = {k: v.detach().clone() for k, v in t_mod.state_dict().items()}
    with torch.no_grad():
        t_mod.load_state_dict(s_mod.state_dict())
    try:
        yield
    finally:
        with torch.no_grad():
            t_mod.load_state_dict(saved)


def _constant(value: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """An output replacement that ignores the layer's own output."""
    return lambda _out: value


def patch_outputs(
    before: nn.Module, after: nn.Module, x: torch.Tensor, y: torch.Tensor, layers: Sequence[str]
) -> pd.DataFrame:
    """Output and weight patching of every layer between two states of one network.

    Args:
        before, after: the network at the two moments (same architecture).
        x, y: the probe.
        layers: module names, in model order.

    Returns:
        One row per layer: layer; loss_after_patched (after with before's output at the layer) and its
        share of the total change, share_after = (loss_after_patched - loss_after) / (loss_before -
        loss_after); loss_before_patched and share_before (the reverse); loss_own_weights and
        share_own_weights (after with the layer's own parameters from before); accuracy columns alike.
        NaN shares when the two states behave the same (no change to explain).
    """
    return _patch_rows(
        before, after, x, y, layers, observe(before, x, y, layers), observe(after, x, y, layers)
    )


def _patch_rows(
    before: nn.Module,
    after: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layers: Sequence[str],
    observed_before: tuple[Behaviour, dict[str, torch.Tensor]],
    observed_after: tuple[Behaviour, dict[str, torch.Tensor]],
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """`patch_outputs` given both models' `observe` results; after each layer, ``progress(forwards)``
    gets the number of forwards that layer took."""
    (b_beh, out_b), (a_beh, out_a) = observed_before, observed_after
    total = b_beh.loss - a_beh.loss

    def share(loss: float, base: float, sign: float) -> float:
        return sign * (loss - base) / total if abs(total) > 1e-12 else float("nan")

    rows = []
    for name in layers:
        with replaced_output(after, name, _constant(out_b[name])):
            pa = behaviour(after, x, y)
        with replaced_output(before, name, _constant(out_a[name])):
            pb = behaviour(before, x, y)
        pw: Behaviour | None = None
        if _has_parameters(after, name):
            with _weights_from(after, before, name):
                pw = behaviour(after, x, y)
        rows.append(
            {
                "layer": name,
                "loss_after_patched": pa.loss,
                "share_after": share(pa.loss, a_beh.loss, 1.0),
                "accuracy_after_patched": pa.accuracy,
                "loss_before_patched": pb.loss,
                "share_before": share(pb.loss, b_beh.loss, -1.0),
                "accuracy_before_patched": pb.accuracy,
                "loss_own_weights": pw.loss if pw else float("nan"),
                "share_own_weights": share(pw.loss, a_beh.loss, 1.0) if pw else float("nan"),
                "accuracy_own_weights": pw.accuracy if pw else float("nan"),
            }
        )
        if progress is not None:
            progress(2 if pw is None else 3)
    df = pd.DataFrame(rows)
    df["total_change"] = a_beh.loss - b_beh.loss  # nats: the loss change the shares divide
    df.attrs.update(
        loss_before=b_beh.loss, loss_after=a_beh.loss, acc_before=b_beh.accuracy, acc_after=a_beh.accuracy
    )
    return df


def localise(patching: pd.DataFrame, share: float = RECOVERED_SHARE) -> str | None:
    """The first layer (model order) whose output patch recovers at least `share` of the change, or None."""
    hit = patching[patching["share_after"] >= share]
    return None if hit.empty else str(hit["layer"].iloc[0])


def default_k(before: np.ndarray, after: np.ndarray, max_k: int = 8) -> int:
    """k from the metric change: the rise in cumulative_energy_90 (directions needed for 90% of the
    energy) from before to after, at least 1 and at most `max_k` (and the layer's width)."""
    from ndt.measure.spectrum import compute_metrics

    ce = [compute_metrics(m, center=True, metrics=["cumulative_energy_90"]) for m in (before, after)]
    rise = float(ce[1]["cumulative_energy_90"]) - float(ce[0]["cumulative_energy_90"])  # type: ignore[arg-type]
    return int(min(max(1, round(rise)), max_k, before.shape[1]))


def causal_forwards(n_layers: int, n_random: int) -> int:
    """Forwards of the probe `causal_table` runs at most: 2 (both models observed once), then per layer 3
    patches (output both ways, own weights: not for a layer without parameters) and 1 + n_random
    ablations."""
    return 2 + n_layers * (4 + n_random)


def causal_table(
    before: nn.Module,
    after: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layers: Sequence[str],
    *,
    k: int | None = None,
    n_random: int = 20,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Patching and direction ablation for every layer (see the module docstring).

    Cost: at most 2 + L (4 + n_random) forwards of the probe for L layers (`causal_forwards`).

    Args:
        before, after: the network at the two moments.
        x, y: the probe (inputs, integer classes).
        layers: module names in model order.
        k: directions ablated per layer; None: `default_k` per layer.
        n_random: random-direction draws per layer.
        seed: seed of the random directions.
        progress: called as ``progress(done, total)`` in forwards of the probe, after each patched
            and each ablated layer, e.g. to report how long the rest will take.

    Returns:
        `patch_outputs`'s columns plus, per layer: k, ablation_effect (loss increase), ablation_accuracy_drop,
        random_mean, random_sd, ablation_z, worst_class and worst_class_change (the class whose accuracy
        fell most under the ablation, and by how much). ``attrs`` keep the probe's losses and accuracies.
    """
    with_weights = sum(_has_parameters(after, n) for n in layers)
    total = causal_forwards(len(layers), n_random) - (len(layers) - with_weights)
    done = 0

    def step(forwards: int) -> None:
        nonlocal done
        done += forwards
        if progress is not None:
            progress(done, total)

    (b_beh, out_b), (a_beh, out_a) = observe(before, x, y, layers), observe(after, x, y, layers)
    step(2)
    table = _patch_rows(before, after, x, y, layers, (b_beh, out_b), (a_beh, out_a), step)
    padding = declared_padding(after, x)
    extra = []
    for name in layers:
        fb = feature_matrix(out_b[name], padding).cpu().numpy()
        fa = feature_matrix(out_a[name], padding).cpu().numpy()
        k_layer = min(k, fa.shape[1]) if k is not None else default_k(fb, fa)
        dirs = added_directions(fb, fa, k_layer)
        abl = ablate_directions(
            after, x, y, name, dirs, n_random=n_random, seed=seed, base=a_beh, output=out_a[name]
        )
        step(1 + n_random)
        change = np.asarray(abl["class_accuracy_change"], dtype=np.float64)
        worst = int(np.nanargmin(change)) if np.isfinite(change).any() else -1
        extra.append(
            {
                "k": k_layer,
                "ablation_effect": abl["effect"],
                "ablation_accuracy_drop": abl["accuracy_drop"],
                "random_mean": abl["random_mean"],
                "random_sd": abl["random_sd"],
                "ablation_z": abl["z"],
                "worst_class": worst,
                "worst_class_change": float(change[worst]) if worst >= 0 else float("nan"),
            }
        )
    out = pd.concat([table, pd.DataFrame(extra)], axis=1)
    out.attrs.update(table.attrs)
    return out


def layer_verdict(row: pd.Series, control: pd.Series | None = None) -> str:
    """A plain-words verdict for one layer's row of `causal_table` (and the same layer's control row).

    "effect" when the layer's own weights carry at least half of the change (judged only when the probe
    loss changed by at least `MIN_TOTAL_CHANGE` nats), or ablating its added directions is significant
    (z >= `Z_SIGNIFICANT`); "no effect" otherwise. With a control (the same
    analysis over an ordinary stretch of training as long), it says whether the event's ablation
    effect (the loss change, nats) exceeds the control's. The effect, not the z-score: directions a
    layer learned during any stretch of training matter more than random ones, so the control's z is
    often large too (sparse parity's plateau before the jump: control z 83-247 on 4 of 5 seeds, effect
    under 0.03 nats against 0.14-0.31 at the event; README "Looking inside a jump").
    """
    own = row.get("share_own_weights")
    total = abs(float(row.get("total_change", math.inf)))
    if total < MIN_TOTAL_CHANGE:
        own = None  # too small a change for its shares to mean anything
    z = float(row["ablation_z"])
    parts = []
    if own is not None and pd.notna(own):
        parts.append(f"its own weights carry {100 * float(own):.0f}% of the loss change")
    elif total < MIN_TOTAL_CHANGE:
        parts.append(f"the probe loss changed by only {total:.3g} nats (shares not judged)")
    parts.append(
        f"ablating its {int(row['k'])} added direction(s) changes the loss by {row['ablation_effect']:+.3g} (z = {z:.1f} against random directions)"
    )
    matters = (own is not None and pd.notna(own) and float(own) >= RECOVERED_SHARE) or z >= Z_SIGNIFICANT
    verdict = "effect" if matters else "no effect"
    if control is not None:
        zc = float(control["ablation_z"])
        effect, effect_c = float(row["ablation_effect"]), float(control["ablation_effect"])
        more = matters and effect > effect_c
        parts.append(
            f"{'more' if more else 'not more'} than an ordinary stretch of training (control: "
            f"{effect_c:+.3g}, z = {zc:.1f})"
        )
    return f"{verdict}: " + "; ".join(parts)
