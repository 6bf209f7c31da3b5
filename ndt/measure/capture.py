"""Activation capture: temporary forward hooks that turn layer outputs into (n, k) matrices.

By default every ``nn.Linear`` and ``nn.Conv*`` output is captured, plus the attention output of each
``nn.MultiheadAttention`` (its ``out_proj`` Linear is skipped: the attention module applies those
weights functionally, so a hook on it never fires). Hugging Face models (recognised by their classes'
module, ``transformers.*``, so transformers is never imported here):

- ``transformers.pytorch_utils.Conv1D`` (GPT-2's linear layers: a Linear whose weight is stored
  transposed) counts as a Linear;
- an attention module (a class named ``*Attention``, e.g. ``GPT2Attention``, ``BertSelfAttention``)
  with Linear/Conv1D children of its own is measured at its output, and those children (query, key,
  value, output projections, e.g. GPT-2's ``c_attn`` = q, k, v side by side, and ``c_proj``) are not,
  as for ``nn.MultiheadAttention``: the attention output is the representation, its projections are
  its internals. GPT-2 thus gives ``h.{i}.attn``, ``h.{i}.mlp.c_fc``, ``h.{i}.mlp.c_proj`` per block
  and ``lm_head`` (`ndt.models.gpt`).

**Which tensor** of an output: a tensor as it is; a tuple or list its first element (attention
modules return ``(output, weights)``); a mapping (a ``ModelOutput``) its first non-scalar tensor
(``logits``, or ``last_hidden_state``, after a 0-d ``loss``). Outputs with no tensor are not measured.

**Where** (``hook_point``):

- ``pre``: the module's own output (pre-activation; the study's).
- ``post``: the output after the nonlinearity that follows the module, found by this rule, first match:
    1. the model declares it: ``model.post_activations()`` returns {layer name: function}, applied to
       the module's output (ndt's own models, whose ReLUs are functional, declare theirs);
    2. the module sits in an ``nn.Sequential`` and its next sibling, skipping ``nn.Identity`` and
       dropout, is an activation module (anything in ``torch.nn.modules.activation`` but attention):
       that module's output is captured;
    3. otherwise no nonlinearity follows (an output layer, a projection into a residual sum): the
       layer is measured at its own output, and `ActivationCapture.post_source` says ``"none"``.

**Reductions** of outputs with more than two dimensions:

- channels-first maps (B, C, *spatial) (convolutions, and any other output with more than 3 dims),
  ``conv_reduction``:
    * ``positions`` (default) -> (r, C): every spatial position of every sample a row, at most
      ``max_rows`` of them (`position_rows`: the same rows for the same shape at every call);
    * ``spatial_mean`` -> (B, C): mean over positions (the study's). With one input channel this is an
      affine function of the image mean (rank <= 2); in general it is capped near C_in + 1.
- sequences (B, S, F), any other module, ``sequence_reduction``:
    * ``token_mean``   -> (B, F): mean over the valid tokens (default),
    * ``tokens``       -> (n_valid, F): every valid token a sample,
    * ``feature_mean`` -> (B, S): mean over features (what the study's code measured); padding
      columns are zero.

**Padding** (``padding_mask``): a forward pre-hook on the root module turns the model's inputs into a
(B, S) bool mask, True at padding, so that padding positions never enter a measurement. ``"auto"``
(default) asks the model (``model.padding_mask(*inputs)``, as ndt's Transformer declares), else takes
a Hugging Face style ``attention_mask=`` keyword (1 = token, 0 = padding); a callable is called with
the model's own arguments; None measures every position (the study's).
"""

from __future__ import annotations

import functools
import inspect
import logging
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

log = logging.getLogger(__name__)

SequenceReduction = Literal["token_mean", "tokens", "feature_mean"]
ConvReduction = Literal["positions", "spatial_mean"]
HookPoint = Literal["pre", "post"]
PaddingMask = Literal["auto"] | Callable[..., torch.Tensor | None] | None

SEQUENCE_REDUCTIONS: tuple[str, ...] = ("token_mean", "tokens", "feature_mean")
CONV_REDUCTIONS: tuple[str, ...] = ("positions", "spatial_mean")
HOOK_POINTS: tuple[str, ...] = ("pre", "post")

#: Default cap on the rows a per-position conv measurement keeps. The Gram is formed on the feature
#: side (C x C, C <= 256 in the study's CNNs), so its cost is rows * C^2, and the cap keeps n / C >= 16
#: rows per channel. Measured on cnn_shallow and cnn_deep at init (160 smoothed random images, up to
#: 125,440 positions): with 4,096 rows participation ratio, stable rank and effective rank are within
#: 0.6% of all positions' and pr_eigen within 3.5% (1,024 rows: 3% and 5%). The same rows are kept at
#: every step, so that gap is a fixed offset of the series, not step-to-step noise.
MAX_ROWS = 4096
#: Seed of the positions kept (`position_rows`); its own generator, so torch's global RNG (dropout,
#: data order) is never touched by a measurement.
ROW_SEED = 0

_CONV = nn.modules.conv._ConvNd
_SKIPPED_SIBLINGS = (nn.Identity, nn.modules.dropout._DropoutNd)
_ACTIVATIONS = tuple(
    cls
    for cls in vars(nn.modules.activation).values()
    if isinstance(cls, type)
    and issubclass(cls, nn.Module)
    and cls.__module__ == nn.modules.activation.__name__
    and cls is not nn.MultiheadAttention
)

LayerSelector = Iterable[str] | Callable[[str, nn.Module], bool] | None


def _from_transformers(module: nn.Module) -> bool:
    return type(module).__module__.startswith("transformers.")


def _is_linear(module: nn.Module) -> bool:
    """nn.Linear, or Hugging Face's Conv1D (GPT-2's Linear with a transposed weight)."""
    return isinstance(module, nn.Linear) or (type(module).__name__ == "Conv1D" and _from_transformers(module))


def _is_attention(module: nn.Module) -> bool:
    """nn.MultiheadAttention, or a Hugging Face attention module holding its own projections."""
    if isinstance(module, nn.MultiheadAttention):
        return True
    return (
        _from_transformers(module)
        and type(module).__name__.endswith("Attention")
        and any(_is_linear(child) for child in module.children())
    )


def default_layer(name: str, module: nn.Module, parent_of: dict[str, nn.Module]) -> bool:
    """The default selection: Linear (and HF Conv1D), Conv and attention modules, except the
    projections that belong to an attention module (see the module docstring)."""
    if isinstance(module, _CONV) or _is_attention(module):
        return True
    if _is_linear(module):
        parent = parent_of.get(name)
        return parent is None or not _is_attention(parent)
    return False


def _parents(named: dict[str, nn.Module]) -> dict[str, nn.Module]:
    return {
        f"{pname}.{cname}" if pname else cname: parent
        for pname, parent in named.items()
        for cname, _ in parent.named_children()
    }


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
        parent_of = _parents(named)
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
            f"no layers selected in {type(model).__name__}: it has no Linear/Conv/attention "
            "modules; pass layers=[module names] or a predicate"
        )
    return chosen


@functools.lru_cache(maxsize=64)
def position_rows(n_rows: int, max_rows: int, device: torch.device) -> torch.Tensor | None:
    """Which of `n_rows` per-position rows a measurement keeps: None (all) or sorted indices.

    A uniform sample without replacement of `max_rows` of the (sample, position) rows, drawn once per
    (n_rows, max_rows) from a generator seeded with `ROW_SEED`: every measurement of a layer of that
    shape keeps the same rows (with a probe: the same positions of the same images), so the series
    moves only with the weights, never with resampling. Sorted, so the gather reads memory in order.

    Returns:
        None when n_rows <= max_rows, else (max_rows,) int64 indices into the b-major rows on `device`
        (one tensor per shape and device, shared by every call: read it, never write it).
    """
    if n_rows <= max_rows:
        return None
    return _position_rows(n_rows, max_rows, torch.device(device))


@functools.lru_cache(maxsize=64)
def _position_rows(n_rows: int, max_rows: int, device: torch.device) -> torch.Tensor:
    # Cached: drawn and copied to the device once per shape. On CUDA the copy goes from pinned memory
    # without blocking (from pageable memory it would wait for the training stream).
    gen = torch.Generator().manual_seed(ROW_SEED)
    rows = torch.randperm(n_rows, generator=gen)[:max_rows].sort().values
    if device.type == "cuda":
        return rows.pin_memory().to(device, non_blocking=True)
    return rows.to(device)


def per_position(x: torch.Tensor, max_rows: int = MAX_ROWS) -> torch.Tensor:
    """(B, C, *spatial) -> (r, C): each (sample, position) a row, b-major, at most `max_rows` rows."""
    flat = x.flatten(2)  # (B, C, P)
    b, c, p = flat.shape
    idx = position_rows(b * p, max_rows, x.device)
    if idx is None:
        return flat.transpose(1, 2).reshape(b * p, c)
    return flat[idx // p, :, idx % p]  # (r, C): gathers only the kept rows, no full transpose


def _sequence(x: torch.Tensor, reduction: str, keep: torch.Tensor | None) -> torch.Tensor:
    """Reduce (B, S, F); `keep` (B, S) bool marks valid tokens (None: all)."""
    if reduction == "token_mean":
        if keep is None:
            return x.mean(dim=1)
        w = keep.unsqueeze(-1).to(x.dtype)  # (B, S, 1)
        return (x * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)  # an all-padding row gives zeros
    if reduction == "tokens":
        flat = x.reshape(-1, x.shape[-1])
        # Boolean selection has a data-dependent size: one host sync on CUDA (measured steps only).
        return flat if keep is None else flat[keep.reshape(-1)]
    out = x.mean(dim=-1)  # feature_mean: (B, S)
    return out if keep is None else out * keep.to(out.dtype)


def reduce_output(
    output: Any,
    module: nn.Module,
    sequence_reduction: str = "token_mean",
    *,
    conv_reduction: str = "positions",
    max_rows: int = MAX_ROWS,
    padding: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Turn one module output into a (n, k) matrix, or None when it holds no tensor.

    Tuples (e.g. ``nn.MultiheadAttention``'s ``(output, weights)``, Hugging Face attention modules'
    ``(attn_output, attn_weights)``) contribute their first element; mappings (Hugging Face
    ``ModelOutput``s) their first non-scalar tensor (``logits`` after a 0-d ``loss``).

    Args:
        output: the module's output.
        module: the module (conv and batch-first attention change how dims are read).
        sequence_reduction, conv_reduction, max_rows: see the module docstring.
        padding: (B, S) bool, True at padding positions of (B, S, F) outputs; None: no padding.
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
        if conv_reduction == "spatial_mean":
            return output.flatten(2).mean(dim=-1)  # (B, C, *spatial) -> (B, C)
        return per_position(output, max_rows)
    if isinstance(module, nn.MultiheadAttention) and not module.batch_first:
        output = output.transpose(0, 1)  # (S, B, F) -> (B, S, F)
    keep = None
    if padding is not None:
        if tuple(padding.shape) != tuple(output.shape[:2]):
            raise _MaskMismatch(tuple(padding.shape), tuple(output.shape))
        keep = ~padding
    return _sequence(output, sequence_reduction, keep)


class _MaskMismatch(ValueError):
    def __init__(self, mask: tuple[int, ...], output: tuple[int, ...]) -> None:
        super().__init__(f"padding mask {mask} does not match the (B, S) of output {output}")


def _declared(model: nn.Module, attr: str) -> Callable[..., Any] | None:
    fn = getattr(model, attr, None)
    return fn if callable(fn) and not isinstance(fn, nn.Module) else None


def _next_activation(name: str, parent_of: dict[str, nn.Module]) -> tuple[str, nn.Module] | None:
    """The activation module that follows `name` in its nn.Sequential parent (rule 2), or None."""
    parent = parent_of.get(name)
    if not isinstance(parent, nn.Sequential):
        return None
    prefix, _, child = name.rpartition(".")
    keys = list(parent._modules)
    for key in keys[keys.index(child) + 1 :]:
        sibling = parent._modules[key]
        if isinstance(sibling, _SKIPPED_SIBLINGS):
            continue
        if isinstance(sibling, _ACTIVATIONS):
            return (f"{prefix}.{key}" if prefix else key), sibling
        return None
    return None


def resolve_hooks(
    model: nn.Module, modules: dict[str, nn.Module], hook_point: str
) -> dict[str, tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor] | None, str]]:
    """For each layer: (module to hook, function applied to its output or None, source description).

    The source is ``"output"`` (pre), ``"declared"``, ``"module:<name>"`` or ``"none"`` (see the module
    docstring's rule for ``post``).

    Raises:
        ValueError: two layers would read the same activation module (a shared instance).
    """
    if hook_point == "pre":
        return {n: (m, None, "output") for n, m in modules.items()}
    declared_fn = _declared(model, "post_activations")
    declared: dict[str, Callable[[torch.Tensor], torch.Tensor]] = dict(declared_fn()) if declared_fn else {}
    parent_of = _parents(dict(model.named_modules()))
    out: dict[str, tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor] | None, str]] = {}
    readers: dict[int, str] = {}
    for name, module in modules.items():
        if name in declared:
            out[name] = (module, declared[name], "declared")
            continue
        found = _next_activation(name, parent_of)
        if found is None:
            out[name] = (module, None, "none")
            continue
        act, act_module = found
        if id(act_module) in readers:
            raise ValueError(
                f"layers {readers[id(act_module)]!r} and {name!r} are both followed by the same activation "
                f"module instance ({act!r}): its hook cannot tell the calls apart; give each layer its own "
                "activation module, or use hook_point='pre'"
            )
        readers[id(act_module)] = name
        out[name] = (act_module, None, f"module:{act}")
    return out


def _may_take_attention_mask(model: nn.Module) -> bool:
    """Whether `model`'s forward can receive an ``attention_mask=`` keyword (named, or ``**kwargs``).

    When it cannot, ``padding_mask="auto"`` has nothing to look for and the root hooks are not
    registered (two fewer hook calls per measured forward).
    """
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # no signature to read: assume it may
        return True
    return any(p.name == "attention_mask" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


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
        conv_reduction: policy for (B, C, *spatial) outputs: ``positions`` or ``spatial_mean``.
        max_rows: most rows a ``positions`` measurement keeps (see `position_rows`).
        hook_point: ``pre`` (the module's output) or ``post`` (after the following nonlinearity).
        padding_mask: ``"auto"``, a callable of the model's inputs returning a (B, S) bool mask (True
            at padding) or None, or None for no masking (see module docstring).
        transform: applied to each detached (n, k) matrix before it is stored (e.g. Gram
            statistics); default: store the matrix itself.
        grad_enabled_only: capture only forwards run with autograd on (a training step), so that an
            evaluation pass under ``torch.no_grad`` in between does not replace them.
        lazy: once attached, keep the hooks registered only while `enabled` (each change of `enabled`
            registers or removes them): a forward that is not captured then runs with no hook at all.
            A registered hook that returns at once still costs the module call its slow path (a few
            us per hooked module and forward), which then grows with the model's hooked modules, not
            with its compute; on the benchmark's 3-layer MLP the difference is within the 2-core VM's
            noise (15 interleaved pairs: +0.9 points, lazy minus not). Leave it off for a
            ``torch.compile``d model, whose graphs depend on its hooks.

    Attributes:
        layer_names: captured layers, in model order.
        post_source: {layer: where its measurement is read}, see `resolve_hooks`.
        activations: {layer name: transform(matrix)} of the latest forward (one entry per layer
            that ran; a module called several times keeps its last call).
        enabled: hooks store nothing while False (registered or not: see ``lazy``).

    Raises:
        ValueError: an unknown policy, max_rows < 1, or a shared activation module under ``post``.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSelector = None,
        *,
        sequence_reduction: SequenceReduction | str = "token_mean",
        conv_reduction: ConvReduction | str = "positions",
        max_rows: int = MAX_ROWS,
        hook_point: HookPoint | str = "pre",
        padding_mask: PaddingMask | str = "auto",
        transform: Callable[[torch.Tensor], Any] | None = None,
        grad_enabled_only: bool = False,
        lazy: bool = False,
    ) -> None:
        _check_choice("sequence_reduction", sequence_reduction, SEQUENCE_REDUCTIONS)
        _check_choice("conv_reduction", conv_reduction, CONV_REDUCTIONS)
        _check_choice("hook_point", hook_point, HOOK_POINTS)
        if isinstance(padding_mask, str) and padding_mask != "auto":
            raise ValueError(f"padding_mask must be 'auto', a callable or None, got {padding_mask!r}")
        if int(max_rows) < 1:
            raise ValueError(f"max_rows must be a positive number of rows, got {max_rows}")
        self.model = model
        self.modules = select_layers(model, layers)
        self.layer_names: list[str] = list(self.modules)
        self.sequence_reduction = sequence_reduction
        self.conv_reduction = conv_reduction
        self.max_rows = int(max_rows)
        self.hook_point = hook_point
        self._hooks = resolve_hooks(model, self.modules, hook_point)
        self.post_source = {n: src for n, (_, _, src) in self._hooks.items()}
        if hook_point == "post" and (bare := [n for n, s in self.post_source.items() if s == "none"]):
            log.info("hook_point=post: no nonlinearity follows %s; measured at their outputs", bare)
        self._mask_fn: Callable[..., torch.Tensor | None] | None = None
        self._mask_auto = padding_mask == "auto"
        self._keyword_mask_possible = _may_take_attention_mask(model)  # read once: inspect is slow
        if self._mask_auto:
            self._mask_fn = _declared(model, "padding_mask")
        elif callable(padding_mask):
            self._mask_fn = padding_mask
        self.transform = transform
        self.grad_enabled_only = grad_enabled_only
        self.activations: dict[str, Any] = {}
        self.lazy = lazy
        self._enabled = True
        self._wanted = False  # attach() was called and remove() not since
        self._padding: torch.Tensor | None = None  # (B, S) of the forward in progress
        self._warned_mask: set[str] = set()
        self._handles: list[RemovableHandle] = []

    @property
    def enabled(self) -> bool:
        """Whether the hooks store what they see (see ``lazy`` for whether they are registered)."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = bool(value)
        if self.lazy and self._wanted:
            if self._enabled:
                self._register()
            else:
                self._unregister()

    def _active(self) -> bool:
        return self.enabled and not (self.grad_enabled_only and not torch.is_grad_enabled())

    def _root_pre_hook(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._padding = None
        if not self._active():
            return
        mask = self._mask_fn(*args, **kwargs) if self._mask_fn is not None else None
        if mask is None and self._mask_auto:
            attn = kwargs.get("attention_mask")
            if isinstance(attn, torch.Tensor) and attn.ndim == 2:
                mask = attn == 0  # Hugging Face: 1 = token, 0 = padding
        if mask is not None:
            self._padding = mask.detach().to(torch.bool)

    def _root_post_hook(self, *_: Any) -> None:
        self._padding = None  # a mask never outlives its forward

    def _hook(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor] | None) -> Callable[..., None]:
        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            if not self._active():
                return
            if fn is not None:
                output = fn(output[0] if isinstance(output, tuple | list) else output)
            padding = self._padding
            try:
                mat = self._reduce(output, name, padding)
            except _MaskMismatch as e:
                if name not in self._warned_mask:
                    self._warned_mask.add(name)
                    warnings.warn(f"layer {name!r}: {e}; measured unmasked", RuntimeWarning, stacklevel=2)
                mat = self._reduce(output, name, None)
            if mat is None:
                return
            mat = mat.detach()
            self.activations[name] = self.transform(mat) if self.transform else mat

        return hook

    def _reduce(self, output: Any, name: str, padding: torch.Tensor | None) -> torch.Tensor | None:
        return reduce_output(
            output,
            self.modules[name],
            self.sequence_reduction,
            conv_reduction=self.conv_reduction,
            max_rows=self.max_rows,
            padding=padding,
        )

    def attach(self) -> ActivationCapture:
        """Register the hooks (idempotent); with ``lazy``, only while `enabled`."""
        self._wanted = True
        if self._enabled or not self.lazy:
            self._register()
        return self

    def _register(self) -> None:
        if not self._handles:
            self._handles = [
                m.register_forward_hook(self._hook(n, fn)) for n, (m, fn, _) in self._hooks.items()
            ]
            if self._mask_fn is not None or (self._mask_auto and self._keyword_mask_possible):
                self._handles.append(
                    self.model.register_forward_pre_hook(self._root_pre_hook, with_kwargs=True)
                )
                self._handles.append(self.model.register_forward_hook(self._root_post_hook, always_call=True))

    def _unregister(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._padding = None

    def remove(self) -> None:
        """Remove every hook this capture registered."""
        self._wanted = False
        self._unregister()

    def clear(self) -> None:
        """Forget the stored activations."""
        self.activations = {}

    @property
    def attached(self) -> bool:
        """Whether the capture is attached (with ``lazy``, its hooks are registered only while enabled)."""
        return self._wanted

    def __enter__(self) -> ActivationCapture:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.remove()
