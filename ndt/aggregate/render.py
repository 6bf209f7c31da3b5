"""Render a table DataFrame as CSV, Markdown or LaTeX text; deterministic, byte for byte.

- CSV keeps every column and full precision to 6 significant digits (``%.6g``; enough to compare, and
  short of the last digits that vary between BLAS builds); missing values are empty cells.
- Markdown and LaTeX are for reading: floats get 4 significant digits (percentages 1 decimal), missing
  values "-", and a mean with a bootstrap interval (``x``, ``x_ci_low``, ``x_ci_high``) becomes one cell
  ``x [low, high]``. Headers are the column ids made readable (``pct_runs_with_jumps`` ->
  ``% runs with jumps``, ``r2`` -> ``R^2``).

LaTeX tables use booktabs rules (``\\usepackage{booktabs}``). No pandas Styler (it needs jinja2 and its
output changes between pandas versions); the renderers here are small and fixed.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

CI_LOW, CI_HIGH = "_ci_low", "_ci_high"

_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def to_csv(df: pd.DataFrame) -> str:
    """CSV text: header of column ids, one line per row, ``\\n`` line ends, floats as ``%.6g``."""
    return df.to_csv(index=False, float_format="%.6g", lineterminator="\n")


def format_float(value: float) -> str:
    """A float for reading: 4 significant digits; whole numbers from 1000 up; exponent below 0.001."""
    a = abs(value)
    if value == 0:
        return "0"
    if a >= 1000:
        return f"{value:.0f}"
    if a >= 0.001:
        return f"{value:.4g}"
    return f"{value:.3g}"


def format_cell(value: object, column: str = "") -> str:
    """One cell as display text ("-" for missing; percentages, columns ``pct_*``, with 1 decimal)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        v = float(value)
        if math.isnan(v):
            return "-"
        return f"{v:.1f}" if column.startswith("pct") else format_float(v)
    return str(value)


def label(column: str) -> str:
    """Readable header of a column id."""
    if column == "r2":
        return "R^2"
    text = column.replace("pct_", "% ", 1) if column.startswith("pct_") else column
    return text.replace("_", " ")


def display_frame(df: pd.DataFrame) -> tuple[list[str], list[list[str]], list[bool]]:
    """Cells as display text, with intervals merged into their mean's cell.

    Args:
        df: a table; columns ``x_ci_low``/``x_ci_high`` beside ``x`` are merged into it.

    Returns:
        (headers, rows of cells, numeric flag per column: right-aligned).
    """
    merged = {c for c in df.columns if c.endswith((CI_LOW, CI_HIGH))}
    merged = {c for c in merged if c.rsplit("_ci_", 1)[0] in df.columns}
    columns = [c for c in df.columns if c not in merged]
    headers = [label(c) for c in columns]
    numeric = [is_numeric_dtype(df[c]) and not is_bool_dtype(df[c]) for c in columns]
    records = df.astype(object).to_dict("records")
    rows = []
    for rec in records:
        cells = []
        for c in columns:
            cell = format_cell(rec[c], c)
            low, high = rec.get(c + CI_LOW), rec.get(c + CI_HIGH)
            if c + CI_LOW in merged and format_cell(low) != "-" and format_cell(high) != "-":
                cell = f"{cell} [{format_cell(low, c)}, {format_cell(high, c)}]"
            cells.append(cell)
        rows.append(cells)
    return headers, rows, numeric


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned)."""
    headers, rows, numeric = display_frame(df)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join("--:" if n else ":--" for n in numeric) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)]) + "\n"


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(df: pd.DataFrame, caption: str = "", label_id: str = "") -> str:
    """A booktabs ``table`` environment (``tabular`` alone when there is no caption and no label)."""
    headers, rows, numeric = display_frame(df)
    body = [
        r"\begin{tabular}{" + "".join("r" if n else "l" for n in numeric) + "}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in headers) + r" \\",
        r"\midrule",
        *(" & ".join(latex_escape(c) for c in r) + r" \\" for r in rows),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    if not caption and not label_id:
        return "\n".join(body) + "\n"
    head = [r"\begin{table}[htbp]", r"\centering"]
    if caption:
        head.append(r"\caption{" + latex_escape(caption) + "}")
    if label_id:
        head.append(r"\label{" + label_id + "}")
    return "\n".join([*head, *body, r"\end{table}"]) + "\n"
