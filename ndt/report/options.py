"""The options of ``python -m ndt.investigate`` and their small typed ``key=value`` parser.

The syntax is Hydra's override syntax without Hydra: ``RUN_DIR jump=2 layers=hidden.0,fc``. Each
option is a field of `InvestigateOptions`, converted from text by `CONVERTERS`, so a typo in a key or a
wrong type fails at once with a message that lists the valid keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ndt.aggregate.summaries import DEFAULT_METRIC
from ndt.detect import DEFAULT_DETECTOR, DETECTORS


class InvestigationError(ValueError):
    """A request `investigate` cannot serve (bad option, step or jump); the message says what to do."""


@dataclass(frozen=True)
class InvestigateOptions:
    """What to investigate and how (the ``key=value`` options of the command).

    Attributes:
        jump: rank of the jump event by peak magnitude (1 = the largest). Used when `step` is None.
        step: investigate the measurement at this training step instead of a jump (rounded to the
            nearest measured step; ties go to the earlier one).
        layers: module names to capture and compare; None = what the tracker measured.
        layer: search this measured layer's own series for jumps instead of the layer mean.
        metric: metric whose layer-mean series is searched for jumps (the tables' default).
        detector: a name from `ndt.detect.DETECTORS`; None: the run's protocol's detector
            (``protocol.detector`` in its config: "study" for the paper's protocol), else
            `ndt.detect.DEFAULT_DETECTOR`.
        device: where the replay runs ("cpu" replays bit-exactly; "auto" or "cuda" are faster).
        out: output directory; default ``RUN_DIR/investigate/<step_a>-<step_b>``.
        top: most-changed layers shown as PCA scatter plots.
        samples: probe examples shown in the attribution figures (Grad-CAM, saliency).
        causal: run the causal tests (`ndt.analysis.causal`: layer patching, added-direction ablation
            against random directions, and the same on a no-event control stretch).
        k: directions ablated per layer; None: from the rise of cumulative_energy_90 (1 to 8).
        draws: random-direction draws per layer (>= 2; the z-scores' reference).
        control: also test a stretch of the same length without an event (the verdicts' reference).
    """

    jump: int | None = None
    step: int | None = None
    layers: tuple[str, ...] | None = None
    layer: str | None = None
    metric: str = DEFAULT_METRIC
    detector: str | None = None
    device: str = "cpu"
    out: Path | None = None
    top: int = 2
    samples: int = 8
    causal: bool = True
    k: int | None = None
    draws: int = 20
    control: bool = True

    def __post_init__(self) -> None:
        if self.jump is not None and self.step is not None:
            raise InvestigationError("give jump=K or step=N, not both")
        if self.jump is not None and self.jump < 1:
            raise InvestigationError(f"jump={self.jump}: jumps are ranked from 1 (the largest)")
        if self.detector is not None and self.detector not in DETECTORS:
            raise InvestigationError(f"detector={self.detector}: choose one of {', '.join(DETECTORS)}")
        if self.draws < 2:
            raise InvestigationError(
                f"draws={self.draws}: need at least 2 random draws to estimate their spread"
            )
        if self.k is not None and self.k < 1:
            raise InvestigationError(f"k={self.k}: ablate at least one direction")
        if self.top < 1 or self.samples < 1:
            raise InvestigationError(
                f"top and samples must be >= 1, got top={self.top}, samples={self.samples}"
            )
        if self.layers is not None and not self.layers:
            raise InvestigationError("layers= is empty; name modules, e.g. layers=hidden.0,fc")

    def for_run(self, config: Any) -> InvestigateOptions:
        """These options with `detector` resolved for a run whose resolved config is `config`."""
        if self.detector is not None:
            return self
        protocol = config.get("protocol") if hasattr(config, "get") else None
        named = protocol.get("detector") if protocol is not None and hasattr(protocol, "get") else None
        return dataclasses.replace(self, detector=str(named) if named else DEFAULT_DETECTOR)

    @property
    def jump_rank(self) -> int | None:
        """The jump rank to investigate: `jump`, 1 by default, None when a step was given."""
        return None if self.step is not None else (self.jump or 1)


#: One line of help per option, shown by ``--help``.
OPTION_HELP: dict[str, str] = {
    "jump": "rank of the jump event by peak magnitude, 1 = the largest (default 1)",
    "step": "investigate the measurement at this training step instead (rounded to a measured step)",
    "layers": "comma-separated module names (default: the layers the tracker measured)",
    "layer": "search this layer's own series for jumps (default: the layer mean)",
    "metric": f"metric of the layer-mean series searched for jumps (default {DEFAULT_METRIC})",
    "detector": f"jump detector: {', '.join(DETECTORS)} (default: the run's protocol's, else {DEFAULT_DETECTOR})",
    "device": "where the replay runs: cpu (bit-exact, default), auto, cuda",
    "out": "output directory (default RUN_DIR/investigate/<step_a>-<step_b>)",
    "top": "most-changed layers shown as PCA scatter plots (default 2)",
    "samples": "probe examples in the Grad-CAM / saliency figures (default 8)",
    "causal": "causal tests: layer patching and added-direction ablation (default true)",
    "k": "directions ablated per layer (default: the rise of cumulative_energy_90, 1 to 8)",
    "draws": "random-direction draws per layer for the ablation z-score (default 20)",
    "control": "also test a stretch of equal length without an event (default true)",
}

USAGE = "usage: python -m ndt.investigate RUN_DIR [jump=K | step=N] [layers=a,b] [key=value ...]"


def help_text() -> str:
    """The ``--help`` text: usage, what it writes, then one line per option."""
    lines = [
        USAGE,
        "",
        "Restore a run just before and just after a dimensionality jump (or a step), compare the two",
        "models on the run's probe, and write RUN_DIR/investigate/<step_a>-<step_b>/report.html and",
        "summary.json. Steps are measurement steps: step s holds the weights after s + 1 optimizer steps",
        "(after s in a run without a probe, tracker.probe_size=0: its rows measured the training forward).",
        "",
        "options:",
    ]
    lines += [f"  {key + '=':<10} {text}" for key, text in OPTION_HELP.items()]
    return "\n".join(lines)


def _names(raw: str) -> tuple[str, ...]:
    """``hidden.0,fc`` -> ("hidden.0", "fc")."""
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def _flag(raw: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no)."""
    low = raw.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise InvestigationError(f"expected true or false, got {raw!r}")


#: How the text of each option becomes its field's value (the rest stay strings).
CONVERTERS: dict[str, Callable[[str], Any]] = {
    "jump": int,
    "step": int,
    "top": int,
    "samples": int,
    "k": int,
    "draws": int,
    "causal": _flag,
    "control": _flag,
    "layers": _names,
    "out": Path,
}


def parse_options(args: Sequence[str]) -> tuple[Path, InvestigateOptions]:
    """Parse ``RUN_DIR key=value ...`` (the command line after the program name).

    Returns:
        (run directory, options).

    Raises:
        InvestigationError: no run directory, an argument that is not ``key=value``, an unknown or
            repeated key, or a value of the wrong type. The message names the valid keys.
    """
    positional = [a for a in args if "=" not in a]
    pairs = [a for a in args if "=" in a]
    if len(positional) != 1:
        raise InvestigationError(
            f"expected one run directory and key=value options, got {list(args)}\n{USAGE}"
        )
    fields = {f.name: f for f in dataclasses.fields(InvestigateOptions)}
    values: dict[str, Any] = {}
    for pair in pairs:
        key, raw = pair.split("=", 1)
        key = key.strip().lstrip("+")  # a Hydra habit: +key=value means the same here
        if key not in fields:
            raise InvestigationError(f"unknown option {key!r}; valid: {', '.join(fields)}\n{USAGE}")
        if key in values:
            raise InvestigationError(f"option {key} given twice")
        try:
            values[key] = CONVERTERS.get(key, str)(raw.strip())
        except InvestigationError as err:
            raise InvestigationError(f"{key}={raw}: {err}") from None
        except ValueError:
            raise InvestigationError(f"{key}={raw}: expected an integer") from None
    return Path(positional[0]), InvestigateOptions(**values)
