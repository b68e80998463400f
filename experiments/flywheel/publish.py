"""Write or check the published results: docs/results.md, the README's results block and the figures.

- `render`: everything the data determines (page text, README block, figure data), nothing read from
  the published files.
- `write`: the page, the README block between its markers, figures.json and the PNGs.
- `check`: the first difference between what `render` gives and what is published (file, line,
  expected and found text), or None; each PNG the page references must exist.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.flywheel.study import load_study
from experiments.flywheel.study_page import README_TEMPLATE, TEMPLATE, analyse, draw_figures, fields, figure_data, fill
from remit.common.atomic import write_text_atomic

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
_RULE = re.compile(r"^\|(-+\|)+$")


@dataclass
class Rendered:
    page: str
    readme_block: str
    figures: dict[str, Any]

    @property
    def figures_json(self) -> str:
        return json.dumps(self.figures, indent=1, sort_keys=True) + "\n"

    def summary(self) -> str:
        tables = sum(bool(_RULE.match(line)) for line in self.page.splitlines())
        return f"{tables} tables, {len(_IMAGE.findall(self.page))} figures"


def render(data: Path) -> Rendered:
    study = load_study(data)
    res = analyse(study)
    values = fields(study, res)
    return Rendered(fill(TEMPLATE, values), fill(README_TEMPLATE, values), figure_data(study, res))


def figures_json_path(page: Path) -> Path:
    return page.parent / "results" / "figures.json"


def default_readme(page: Path) -> Path:
    """The repository's README.md for a page in its docs/ folder."""
    return page.parent.parent / "README.md"


def _readme_block(readme: Path) -> tuple[list[str], int, int]:
    """The README's lines and the indices of its two marker lines."""
    if not readme.is_file():
        raise FileNotFoundError(f"{readme}: no such README (give its path with --readme)")
    lines = readme.read_text().splitlines()
    if BEGIN not in lines or END not in lines or lines.index(END) < lines.index(BEGIN):
        raise ValueError(f"{readme}: no {BEGIN} line followed by an {END} line; add the two markers around its results")
    return lines, lines.index(BEGIN), lines.index(END)


# --- write ---------------------------------------------------------------------------------------


def write(data: Path, page: Path, readme: Path) -> Rendered:
    r = render(data)
    lines, begin, end = _readme_block(readme)
    page.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(page, r.page)
    new = [*lines[: begin + 1], *r.readme_block.splitlines(), *lines[end:]]
    write_text_atomic(readme, "\n".join(new) + "\n")
    figures_json_path(page).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(figures_json_path(page), r.figures_json)
    draw_figures(r.figures, figures_json_path(page).parent)
    return r


# --- check ---------------------------------------------------------------------------------------


def _excerpt(line: str | None, other: str | None) -> str:
    """`line` quoted, cut to 100 characters around where it first differs from `other`."""
    if line is None:
        return "the end of the file"
    at = next((i for i, (a, b) in enumerate(zip(line, other or "")) if a != b), min(len(line), len(other or "")))
    start = max(0, at - 40)
    cut = ("..." if start else "") + line[start : start + 100] + ("..." if len(line) > start + 100 else "")
    return repr(cut)


def first_difference(name: str, expected: str, found: str, first_line: int = 1) -> str | None:
    """`NAME line N: expected '...', found '...'` for the first differing line, or None."""
    e, f = expected.splitlines(), found.splitlines()
    for i in range(max(len(e), len(f))):
        a, b = (e[i] if i < len(e) else None), (f[i] if i < len(f) else None)
        if a != b:
            return f"{name} line {first_line + i}: expected {_excerpt(a, b)}, found {_excerpt(b, a)}"
    return None if expected.rstrip("\n") == found.rstrip("\n") else f"{name}: differs in its final newlines"


def _published(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; write it with --write")
    return path.read_text()


def check(data: Path, page: Path, readme: Path) -> tuple[Rendered, str | None]:
    """What `render` gives and the first difference from the published files (None if they match)."""
    r = render(data)
    found = first_difference(str(page), r.page, _published(page))
    if found:
        return r, found
    lines, begin, end = _readme_block(readme)
    found = first_difference(str(readme), r.readme_block, "\n".join(lines[begin + 1 : end]), begin + 2)
    if found:
        return r, found
    figures = figures_json_path(page)
    found = first_difference(str(figures), r.figures_json, _published(figures))
    if found:
        return r, found
    for ref in _IMAGE.findall(r.page):
        if not (page.parent / ref).is_file():
            return r, f"{page}: the figure {ref} it shows does not exist"
    return r, None
