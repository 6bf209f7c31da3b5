"""`FeatureVisualizer`: what a trained network looks at, as arrays; PNG writers for them.

Methods (all return float64 numpy arrays on the host):

- ``grad_cam``: Grad-CAM (Selvaraju et al., 2017) of a conv layer, upsampled to the input size;
- ``saliency``: |d score / d input| (Simonyan et al., 2014);
- ``integrated_gradients``: Sundararajan et al., 2017, trapezoid rule along the straight path;

the three attributions are Captum's (`captum.attr`: the maintained implementations); ours only chooses
targets, eval mode and shapes. Attention maps per head are our own (Captum has none).
- ``attention_maps``: per-head attention weights of every ``nn.MultiheadAttention`` and of every
  Hugging Face attention module (GPT-2's ``transformer.h.{i}.attn``);
- ``feature_maps``: the (B, C, H, W) output of one layer.

"Score" is the logit of the target class; targets default to the predicted class. Every method runs
the model in eval mode (dropout off, so the maps are deterministic), restores each module's own
train/eval flag afterwards, removes every hook it registered, and differentiates with
`torch.autograd.grad` (Captum does too) so the parameters' ``.grad`` stay untouched. Samples are treated
independently (the score summed over the batch gives each sample its own gradient), which holds
in eval mode for the study's models.

The ``save_*`` functions write PNGs with matplotlib's Agg renderer through a bare `Figure` (no
pyplot: no global state, no display needed).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: A target class: one for the whole batch, one per sample, or None for the predicted class.
Target = int | Sequence[int] | torch.Tensor | None


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def _hf_attention(module: nn.Module) -> bool:
    """A Hugging Face attention module (class ``*Attention`` from ``transformers``, with a config)."""
    cls = type(module)
    return (
        cls.__module__.startswith("transformers.")
        and cls.__name__.endswith("Attention")
        and hasattr(getattr(module, "config", None), "_attn_implementation")
    )


class FeatureVisualizer:
    """Attribution maps, attention weights and feature maps of one model.

    Example:
        >>> from ndt.models import build_model
        >>> vis = FeatureVisualizer(build_model("cnn_shallow", "mnist"))
        >>> vis.grad_cam(torch.randn(2, 1, 28, 28)).shape
        (2, 28, 28)

    Args:
        model: a classifier mapping a batch to (B, classes) logits. It is not modified.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    # -- plumbing ---------------------------------------------------------------------------------

    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Eval mode inside, each module's own flag restored after (a model may mix modes)."""
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            yield
        finally:
            for m, training in modes.items():
                m.training = training

    def _device(self) -> torch.device:
        for t in (*self.model.parameters(), *self.model.buffers()):
            return t.device
        return torch.device("cpu")

    def _dtype(self) -> torch.dtype:
        """The dtype of the model's first floating parameter (the default dtype if none)."""
        for p in self.model.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    def _batch(self, x: torch.Tensor) -> torch.Tensor:
        """`x` on the model's device; floating inputs also in the model's dtype (token ids stay ints)."""
        return x.to(self._device(), self._dtype()) if x.is_floating_point() else x.to(self._device())

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """A detached float copy of `x` on the model's device that requires grad (a leaf), so that
        every activation is in the graph even when the parameters are frozen."""
        return x.detach().to(self._device(), self._dtype()).clone().requires_grad_(True)

    @staticmethod
    def _targets(logits: torch.Tensor, target: Target) -> torch.Tensor:
        """(B,) long class indices."""
        batch = logits.shape[0]
        if target is None:
            return logits.argmax(dim=1)
        t = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise ValueError(f"got {t.numel()} targets for a batch of {batch}")
        return t

    @staticmethod
    def _score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Sum over the batch of each sample's target logit (per-sample gradients in one backward)."""
        return logits.gather(1, targets[:, None]).sum()

    def _module(self, name: str) -> nn.Module:
        modules = dict(self.model.named_modules())
        if name not in modules:
            raise KeyError(f"no module named {name!r}; available: {[n for n in modules if n]}")
        return modules[name]

    def _last_conv(self) -> str:
        convs = [n for n, m in self.model.named_modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError(f"{type(self.model).__name__} has no nn.Conv2d; pass layer=<module name>")
        return convs[-1]

    # -- attributions -----------------------------------------------------------------------------

    def _forward(self) -> nn.Module:
        """The model as Captum's forward function (attributions are read from its (B, classes) logits)."""
        return self.model

    def _predicted(self, inp: torch.Tensor, target: Target) -> torch.Tensor:
        """(B,) targets for Captum: the given ones, or the class predicted for `inp`."""
        with torch.no_grad():
            logits = self.model(inp)
        return self._targets(logits, target)

    def grad_cam(self, x: torch.Tensor, target: Target = None, layer: str | None = None) -> np.ndarray:
        """Grad-CAM (Captum's `LayerGradCam`): ReLU of the gradient-weighted sum of a layer's channels.

        For target class c and layer output A (B, C, h, w): weights w_c = mean over positions of
        d score / d A; cam = ReLU(sum_c w_c A_c), bilinearly upsampled to the input's (H, W)
        (`LayerAttribution.interpolate`) and divided by its per-sample maximum (an all-zero map stays zero).

        Args:
            x: (B, C_in, H, W) images.
            target: class per sample, one class for all, or None for the predicted class.
            layer: module name (e.g. "conv.1"); default the last nn.Conv2d. In the study's CNNs its
                output is the pre-ReLU convolution (ReLU and pooling are functional).

        Returns:
            (B, H, W) float64 in [0, 1].
        """
        from captum.attr import LayerAttribution, LayerGradCam

        if x.ndim != 4:
            raise ValueError(f"grad_cam needs (B, C, H, W) images, got shape {tuple(x.shape)}")
        module = self._module(layer if layer is not None else self._last_conv())
        with self._eval_mode():
            inp = self._input(x)
            targets = self._predicted(inp, target)
            with torch.enable_grad():
                cam = LayerGradCam(self._forward(), module).attribute(
                    inp, target=targets, relu_attributions=True
                )
        if not isinstance(cam, torch.Tensor) or cam.ndim != 4:
            raise ValueError(f"grad_cam needs a layer with (B, C, h, w) output; layer {layer!r} has another")
        cam = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), "bilinear")[:, 0]
        peak = cam.flatten(1).amax(dim=1).clamp_min(torch.finfo(cam.dtype).tiny)  # (B,)
        # Bilinear weights are convex, so the upsampled map stays >= 0 and max-scaling lands in [0, 1].
        return _numpy(cam / peak[:, None, None]).clip(0.0, 1.0)

    def saliency(self, x: torch.Tensor, target: Target = None, *, absolute: bool = True) -> np.ndarray:
        """Gradient of the target logit with respect to the input (Captum's `Saliency`).

        Args:
            x: a batch of inputs, any shape (B, ...) the model accepts.
            target: see `grad_cam`.
            absolute: return |gradient| (the usual saliency map); False keeps the sign.

        Returns:
            float64 array of x's shape.
        """
        from captum.attr import Saliency

        with self._eval_mode():
            inp = self._input(x)
            targets = self._predicted(inp, target)
            with torch.enable_grad():
                grad = Saliency(self._forward()).attribute(inp, target=targets, abs=absolute)
        return _numpy(grad)

    def integrated_gradients(
        self,
        x: torch.Tensor,
        target: Target = None,
        steps: int = 32,
        baseline: torch.Tensor | None = None,
    ) -> np.ndarray:
        """Integrated gradients (Captum's `IntegratedGradients`) along the straight path.

        The path integral is approximated by Gauss-Legendre quadrature on `steps` points, Captum's
        default (its ``riemann_trapezoid`` weights sum to (n - 1) / n, not 1: a linear model measured
        here got 0.8 of its exact attribution at n = 5). Completeness: the attributions of a sample
        sum to score(x) - score(baseline), up to the quadrature error (for ReLU networks it comes from
        the kinks along the path and shrinks as `steps` grows).

        Args:
            x: a batch of inputs (B, ...).
            target: see `grad_cam`; None takes the class predicted for x (not for the path points).
            steps: number of quadrature points (one forward/backward of the batch each), >= 1.
            baseline: reference input of x's shape, or broadcastable to it; default zeros.

        Returns:
            float64 array of x's shape.
        """
        from captum.attr import IntegratedGradients

        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        with self._eval_mode():
            inp = self._input(x).detach()
            base = torch.zeros_like(inp) if baseline is None else baseline.to(inp).expand_as(inp)
            targets = self._predicted(inp, target)
            with torch.enable_grad():
                attr = IntegratedGradients(self._forward()).attribute(
                    inp,
                    baselines=base,
                    target=targets,
                    n_steps=steps,
                    method="gausslegendre",
                    internal_batch_size=inp.shape[0],  # one path point per forward, as a batch
                )
        return _numpy(attr)

    # -- inside the network -----------------------------------------------------------------------

    def attention_maps(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """Per-head attention weights of every attention module for one forward pass.

        ``nn.MultiheadAttention``: encoder layers call their attention with ``need_weights=False``; a
        temporary forward hook re-runs each attention module's ``forward`` on the very same inputs with
        ``need_weights=True, average_attn_weights=False`` (calling ``forward`` directly fires no
        hooks) and keeps only the weights, so the model's own computation is untouched. A hook
        on a submodule also turns off the fused encoder-layer fast path, so the hooks do fire.

        Hugging Face attention modules (``*Attention`` classes of ``transformers`` returning
        ``(output, weights)``, e.g. GPT-2's): the forward runs with the model's config switched to
        ``attn_implementation="eager"`` (the fused SDPA kernels return no weights; eager computes the
        same attention with the softmax kept), and a hook keeps each module's second output. The config
        is restored afterwards.

        Args:
            x: a batch of inputs (B, ...).

        Returns:
            {module name (e.g. "encoder.layers.0.self_attn", "transformer.h.0.attn"): (B, heads, L, S)
            float64 weights}, each row (over S keys) summing to 1, in model order.
        """
        mha = {n: m for n, m in self.model.named_modules() if isinstance(m, nn.MultiheadAttention)}
        hf = {n: m for n, m in self.model.named_modules() if _hf_attention(m)}
        if not mha and not hf:
            raise ValueError(
                f"{type(self.model).__name__} has no attention module (nn.MultiheadAttention or a Hugging Face one)"
            )
        store: dict[str, torch.Tensor] = {}

        def rerun(name: str) -> Any:
            def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], _output: Any) -> None:
                # Bind, so need_weights is overridden whether the caller passed it by position or name.
                bound = inspect.signature(module.forward).bind(*args, **kwargs)
                bound.arguments["need_weights"] = True
                bound.arguments["average_attn_weights"] = False
                _, weights = module.forward(*bound.args, **bound.kwargs)
                store[name] = weights.detach()

            return hook

        def keep(name: str) -> Any:
            def hook(_module: nn.Module, _args: Any, output: Any) -> None:
                if (
                    isinstance(output, tuple | list)
                    and len(output) > 1
                    and isinstance(output[1], torch.Tensor)
                ):
                    store[name] = output[1].detach()

            return hook

        handles = [m.register_forward_hook(rerun(n), with_kwargs=True) for n, m in mha.items()]
        handles += [m.register_forward_hook(keep(n)) for n, m in hf.items()]
        configs = {id(c): c for m in hf.values() if (c := getattr(m, "config", None)) is not None}
        saved = {k: c._attn_implementation for k, c in configs.items()}
        try:
            for c in configs.values():
                c._attn_implementation = "eager"
            with self._eval_mode(), torch.no_grad():
                self.model(self._batch(x))
        finally:
            for k, c in configs.items():
                c._attn_implementation = saved[k]
            for h in handles:
                h.remove()
        order = [n for n, _ in self.model.named_modules() if n in mha or n in hf]
        return {n: _numpy(store[n]) for n in order if n in store}

    def feature_maps(self, x: torch.Tensor, layer: str) -> np.ndarray:
        """The output of one layer with spatial maps (e.g. a conv).

        Args:
            x: a batch of inputs (B, ...).
            layer: module name, e.g. "conv.0" (for the study's CNNs: pre-ReLU, pre-pool).

        Returns:
            (B, C, H, W) float64.
        """
        module = self._module(layer)
        store: dict[str, Any] = {}

        def keep_output(_m: nn.Module, _inputs: Any, output: Any) -> None:
            store["out"] = output

        handle = module.register_forward_hook(keep_output)
        try:
            with self._eval_mode(), torch.no_grad():
                self.model(self._batch(x))
        finally:
            handle.remove()
        out = store.get("out")
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"layer {layer!r} gave {shape}, not (B, C, H, W) feature maps")
        return _numpy(out)


# -- PNG writers ----------------------------------------------------------------------------------


def _host(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return _numpy(a) if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float64)


def _grid_figure(n: int, ncols: int | None, panel_inches: float = 1.6) -> tuple[Figure, np.ndarray]:
    """A bare Agg-rendered figure with n panels (axes off), and its (rows, cols) axes array."""
    from matplotlib.figure import Figure  # lazy: plotting is optional for the library

    cols = max(1, min(n, ncols if ncols else int(np.ceil(np.sqrt(n)))))
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(panel_inches * cols, panel_inches * rows + 0.3), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def _save(fig: Figure, path: str | Path, title: str | None) -> Path:
    if title:
        fig.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    return out


def save_image_grid(
    images: np.ndarray | torch.Tensor,
    path: str | Path,
    *,
    titles: Sequence[str] | None = None,
    ncols: int | None = None,
    cmap: str = "viridis",
    title: str | None = None,
) -> Path:
    """Write N single-channel images as a grid of panels, each with its own colour scale.

    Args:
        images: (N, H, W).
        path: PNG file to write (parent folders are created).
        titles: N panel titles.
        ncols: panels per row; default about sqrt(N).
        cmap: matplotlib colour map.
        title: figure title.

    Returns:
        The path written.
    """
    imgs = _host(images)
    if imgs.ndim != 3:
        raise ValueError(f"expected (N, H, W) images, got shape {imgs.shape}")
    fig, axes = _grid_figure(len(imgs), ncols)
    for i, img in enumerate(imgs):
        ax = axes.flat[i]
        ax.imshow(img, cmap=cmap)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    return _save(fig, path, title)


def save_feature_maps(
    maps: np.ndarray | torch.Tensor, path: str | Path, *, max_maps: int = 64, title: str | None = None
) -> Path:
    """Write the channels of one sample's feature maps as a grid.

    Args:
        maps: (C, H, W), e.g. ``feature_maps(x, "conv.0")[i]``.
        path: PNG file.
        max_maps: show the first min(C, max_maps) channels.
        title: figure title.
    """
    m = _host(maps)[:max_maps]
    return save_image_grid(m, path, titles=[f"ch {c}" for c in range(len(m))], title=title)


def save_attention(
    weights: np.ndarray | torch.Tensor | Mapping[str, np.ndarray | torch.Tensor],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Write attention weights, one panel per head (one row per layer for a dict), scale 0..1.

    Args:
        weights: (heads, L, S) for one sample and layer, or {layer name: (heads, L, S)}, e.g.
            ``{n: w[i] for n, w in attention_maps(x).items()}``.
        path: PNG file.
        title: figure title.
    """
    layers = {"": weights} if not isinstance(weights, Mapping) else dict(weights)
    arrays = {name: _host(w) for name, w in layers.items()}
    for name, w in arrays.items():
        if w.ndim != 3:
            raise ValueError(f"expected (heads, L, S) weights for {name or 'the layer'}, got shape {w.shape}")
    heads = max(w.shape[0] for w in arrays.values())
    fig, axes = _grid_figure(len(arrays) * heads, heads)
    for r, (name, w) in enumerate(arrays.items()):
        for h in range(w.shape[0]):
            ax = axes[r, h]
            ax.imshow(w[h], cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"{name} head {h}".strip(), fontsize=7)
    return _save(fig, path, title)


def _display_image(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(H, W) or (C, H, W) with C in {1, 3} -> an imshow-ready image scaled to [0, 1], and its cmap."""
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return img, ("gray" if img.ndim == 2 else None)


def save_overlay(
    images: np.ndarray | torch.Tensor,
    heatmaps: np.ndarray | torch.Tensor,
    path: str | Path,
    *,
    alpha: float = 0.5,
    ncols: int | None = None,
    title: str | None = None,
) -> Path:
    """Write heat maps (Grad-CAM, saliency) over their images, one panel per sample.

    Args:
        images: (B, C, H, W) with C 1 or 3, (B, H, W), or one image (C, H, W) / (H, W).
        heatmaps: (B, H, W), or (H, W) for one image; e.g. ``grad_cam(x)`` or
            ``saliency(x).max(axis=1)``.
        path: PNG file.
        alpha: opacity of the heat map.
        ncols: panels per row.
        title: figure title.
    """
    maps = _host(heatmaps)
    imgs = _host(images)
    if maps.ndim == 2:
        maps, imgs = maps[None], imgs[None]
    if imgs.ndim not in (3, 4) or len(imgs) != len(maps):
        raise ValueError(f"images {imgs.shape} do not match heat maps {maps.shape}")
    fig, axes = _grid_figure(len(maps), ncols, panel_inches=2.0)
    for i, (img, heat) in enumerate(zip(imgs, maps, strict=True)):
        ax = axes.flat[i]
        shown, cmap = _display_image(img)
        ax.imshow(shown, cmap=cmap)
        ax.imshow(heat, cmap="jet", alpha=alpha)
    return _save(fig, path, title)
