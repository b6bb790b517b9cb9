"""A table as data (title, columns, cells, notes) and its two renderings, Markdown and LaTeX (booktabs).

A cell is a number, a string, or None. None renders as MISSING ("–"), never as 0."""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

MISSING = "–"


@dataclasses.dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    fmt: Callable[[float], str] = lambda v: f"{v:.4g}"
    notes: list[str] = dataclasses.field(default_factory=list)
    name: str = "table"  # file-name stem

    def cell(self, v: Any) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return MISSING
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, (int, float)):
            return self.fmt(float(v))
        return str(v)


def percent(v: float) -> str:
    return f"{100 * v:.1f}"


def three(v: float) -> str:
    return f"{v:.3f}"


def signed_points(v: float) -> str:
    return f"{v:+.1f}"


_NUMBERLIKE = re.compile(r"^[+\-−]?\d")


def numeric_column(t: Table, i: int) -> bool:
    """A column of numbers (right-aligned): numbers, or cells that start as one ("50.0 ± 9.8", "41.2‡")."""
    return any((isinstance(r[i], (int, float)) and not isinstance(r[i], bool))
               or (isinstance(r[i], str) and _NUMBERLIKE.match(r[i])) for r in t.rows)


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def to_markdown(t: Table) -> str:
    lines = [f"### {t.title}", ""]
    numeric = [numeric_column(t, i) for i in range(len(t.columns))]
    lines.append("| " + " | ".join(_md_escape(c) for c in t.columns) + " |")
    lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    for r in t.rows:
        lines.append("| " + " | ".join(_md_escape(t.cell(v)) for v in r) + " |")
    if t.notes:
        lines.append("")
        lines.extend(f"- {n}" for n in t.notes)
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "–": "--", "−": "$-$", "†": r"$^\dagger$",
        "‡": r"$^\ddagger$", "±": r"$\pm$", "≡": r"$\equiv$", "Δ": r"$\Delta$", "√": r"$\surd$", "≈": r"$\approx$",
        "×": r"$\times$", "≠": r"$\neq$", "⚠": "(!)", "‖": r"$\|$"}


def tex_escape(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in s)


def to_latex(t: Table) -> str:
    numeric = [numeric_column(t, i) for i in range(len(t.columns))]
    spec = "".join("r" if n else "l" for n in numeric)
    out = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{tex_escape(t.title)}}}",
           rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
           " & ".join(tex_escape(c) for c in t.columns) + r" \\", r"\midrule"]
    for r in t.rows:
        out.append(" & ".join(tex_escape(t.cell(v)) for v in r) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if t.notes:
        out.append(r"\par\smallskip\footnotesize")
        out.extend(tex_escape(n) + r"\\" for n in t.notes)
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"
