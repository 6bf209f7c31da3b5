"""Activation capture: temporary forward hooks that turn layer outputs into (n, k) matrices.

By default every ``nn.Linear`` and ``nn.Conv*`` output is captured (pre-activation, as in the study),
plus the attention output of each ``nn.MultiheadAttention`` (its ``out_proj`` Linear is skipped: the
attention module applies those weights functionally, so a hook on it never fires).

Outputs with more than two dimensions are reduced by a named policy:

- convolutions (B, C, *spatial) -> (B, C): mean over the spatial positions (the study's);
- sequences (B, S, F), any other module:
    * ``token_mean``   -> (B, F): mean over tokens (default),
    * ``tokens``       -> (B*S, F): every token a sample,
    * ``feature_mean`` -> (B, S): mean over features (what the study's code measured).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

SequenceReduction = Literal["token_mean", "tokens", "feature_mean"]

#: Named reductions of a (B, S, F) batch-first sequence output to a 2-D matrix.
SEQUENCE_REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "token_mean": lambda x: x.mean(dim=1),
    "tokens": lambda x: x.reshape(-1, x.shape[-1]),
    "feature_mean": lambda x: x.mean(dim=-1),
}

_CONV = nn.modules.conv._ConvNd

LayerSelector = Iterable[str] | Callable[[str, nn.Module], bool] | None


def default_layer(name: str, module: nn.Module, parent_of: dict[str, nn.Module]) -> bool:
    """The default selection: Linear, Conv and MultiheadAttention modules, except MHA's out_proj."""
    if isinstance(module, nn.MultiheadAttention | _CONV):
        return True
    if isinstance(module, nn.Linear):
        return not isinstance(parent_of.get(name), nn.MultiheadAttention)
    return False


def select_layers(model: nn.Module, layers: LayerSelector = None) -> dict[str, nn.Module]:
    """Resolve a layer selection to {qualified name: module}, in model order.

    Args:
        model: the network.
        layers: None (the default selection), an iterable of qualified module names, or a
            predicate ``(name, module) -> bool``.

    Raises:
        KeyError: a named layer does not exist (the message lists the candidates).
        ValueError: the selection is empty.
    """
    named = dict(model.named_modules())
    if layers is None:
        parent_of = {
            f"{pname}.{cname}" if pname else cname: parent
            for pname, parent in named.items()
            for cname, _ in parent.named_children()
        }
        chosen = {n: m for n, m in named.items() if n and default_layer(n, m, parent_of)}
    elif callable(layers):
        chosen = {n: m for n, m in named.items() if n and layers(n, m)}
    else:
        wanted = list(layers)
        missing = [n for n in wanted if n not in named]
        if missing:
            available = [n for n in named if n]
            raise KeyError(f"no module named {missing} in {type(model).__name__}; available: {available}")
        order = {n: i for i, n in enumerate(named)}
        chosen = {n: named[n] for n in sorted(set(wanted), key=order.__getitem__)}
    if not chosen:
        raise ValueError(
            f"no layers selected in {type(model).__name__}: it has no Linear/Conv/MultiheadAttention "
            "modules; pass layers=[module names] or a predicate"
        )
    return chosen


def reduce_output(
    output: Any, module: nn.Module, sequence_reduction: str = "token_mean"
) -> torch.Tensor | None:
    """Turn one module output into a (n, k) matrix, or None when it holds no tensor.

    Tuples (e.g. ``nn.MultiheadAttention``'s ``(output, weights)``, Hugging Face attention modules'
    ``(attn_output, attn_weights)``) contribute their first element; mappings (Hugging Face
    ``ModelOutput``s) their first non-scalar tensor (``logits`` after a 0-d ``loss``).
    """
    if isinstance(output, Mapping):
        output = next((v for v in output.values() if isinstance(v, torch.Tensor) and v.ndim > 0), None)
    if isinstance(output, tuple | list):
        output = output[0] if output else None
    if not isinstance(output, torch.Tensor) or output.ndim == 0:
        return None
    if output.ndim == 1:
        return output[:, None]
    if output.ndim == 2:
        return output
    if isinstance(module, _CONV) or output.ndim > 3:
        return output.flatten(2).mean(dim=-1)  # (B, C, *spatial) -> (B, C)
    if isinstance(module, nn.MultiheadAttention) and not module.batch_first:
        output = output.transpose(0, 1)  # (S, B, F) -> (B, S, F)
    return SEQUENCE_REDUCTIONS[sequence_reduction](output)


class ActivationCapture:
    """Capture reduced layer outputs with forward hooks, removed on exit.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> with ActivationCapture(model) as cap:
        ...     _ = model(torch.randn(5, 4))
        >>> {k: tuple(v.shape) for k, v in cap.activations.items()}
        {'0': (5, 3), '2': (5, 2)}

    Args:
        model: the network.
        layers: see `select_layers`.
        sequence_reduction: policy for (B, S, F) outputs (see module docstring).
        transform: applied to each detached (n, k) matrix before it is stored (e.g. Gram
            statistics); default: store the matrix itself.
        grad_enabled_only: capture only forwards run with autograd on (a training step), so that an
            evaluation pass under ``torch.no_grad`` in between does not replace them.

    Attributes:
        layer_names: captured layers, in model order.
        activations: {layer name: transform(matrix)} of the latest forward (one entry per layer
            that ran; a module called several times keeps its last call).
        enabled: hooks store nothing while False (they stay registered; the cost is one Python call).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSelector = None,
        *,
        sequence_reduction: SequenceReduction | str = "token_mean",
        transform: Callable[[torch.Tensor], Any] | None = None,
        grad_enabled_only: bool = False,
    ) -> None:
        if sequence_reduction not in SEQUENCE_REDUCTIONS:
            raise ValueError(
                f"unknown sequence_reduction {sequence_reduction!r}; choose one of {', '.join(SEQUENCE_REDUCTIONS)}"
            )
        self.model = model
        self.modules = select_layers(model, layers)
        self.layer_names: list[str] = list(self.modules)
        self.sequence_reduction = sequence_reduction
        self.transform = transform
        self.grad_enabled_only = grad_enabled_only
        self.activations: dict[str, Any] = {}
        self.enabled = True
        self._handles: list[RemovableHandle] = []

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            if not self.enabled or (self.grad_enabled_only and not torch.is_grad_enabled()):
                return
            mat = reduce_output(output, module, self.sequence_reduction)
            if mat is None:
                return
            mat = mat.detach()
            self.activations[name] = self.transform(mat) if self.transform else mat

        return hook

    def attach(self) -> ActivationCapture:
        """Register the hooks (idempotent)."""
        if not self._handles:
            self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def remove(self) -> None:
        """Remove every hook this capture registered."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def clear(self) -> None:
        """Forget the stored activations."""
        self.activations = {}

    @property
    def attached(self) -> bool:
        """Whether the hooks are registered."""
        return bool(self._handles)

    def __enter__(self) -> ActivationCapture:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.remove()
