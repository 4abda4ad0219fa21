"""report.html: report.md's content as one self-contained page (the figures inline as SVG,
the tables sortable by a click on a column, no network), to open from an MLflow run's
artifacts or mail to a colleague. Every value from the store is escaped."""

from __future__ import annotations

import re
from html import escape

from transferlab.report_markdown import counts, objective_line, tables
from transferlab.report_plots import DrawnFigure
from transferlab.report_study import Study

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 78em; color: #222; }
figure { margin: 1.5em 0; } figure svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-style: italic; }
div.table { overflow-x: auto; } table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left;
  white-space: nowrap; }
th { cursor: pointer; background: #f4f4f4; user-select: none; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
"""
# A click on a header sorts its table by that column (numbers by value, `0.91 ± 0.02` by
# its mean, empty cells last); a second click reverses.
SCRIPT = """
function cellValue(row, column) {
  const text = row.cells[column].textContent.trim();
  const number = parseFloat(text.split(" ")[0]);
  return text === "" ? null : (isNaN(number) ? text : number);
}
function sortTable(header) {
  const table = header.closest("table");
  const column = Array.from(header.parentNode.children).indexOf(header);
  const ascending = header.getAttribute("aria-sort") !== "ascending";
  table.querySelectorAll("th").forEach((th) => th.removeAttribute("aria-sort"));
  header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = cellValue(a, column), y = cellValue(b, column);
    if (x === null || y === null) return (x === null) - (y === null);
    const order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0)
      : String(x).localeCompare(String(y));
    return ascending ? order : -order;
  });
  rows.forEach((row) => body.appendChild(row));
}
document.querySelectorAll("th").forEach((th) => th.addEventListener("click", () => sortTable(th)));
"""
NUMBER = re.compile(r"-?\d[\d.e+-]*( ± [\d.e+-]+)?")


def render_html(study: Study, figures: list[DrawnFigure]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(study.title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Report: {escape(study.title)}</h1>",
        f"<p>{escape(counts(study.rows))}</p>",
        f"<p>{_code(objective_line(study))}</p>",
    ]
    for figure in figures:
        svg = next(path for path in figure.files if path.suffix == ".svg").read_text()
        parts += [
            f'<figure aria-label="{escape(figure.data.title)}">{_inline(svg)}',
            f"<figcaption>{escape(figure.data.caption)}</figcaption></figure>",
        ]
    for heading, (header, body) in tables(study).items():
        parts += [f"<h2>{escape(heading)}</h2>", _table(header, body)]
    parts += [f"<script>{SCRIPT}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


def _code(text: str) -> str:
    """report.md's `code` spans as <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", escape(text))


def _inline(svg: str) -> str:
    """matplotlib's SVG file without its XML prologue and doctype: an <svg> element."""
    return svg[svg.index("<svg") :]


def _table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    rows = "".join("<tr>" + "".join(_cell(str(cell)) for cell in cells) + "</tr>" for cells in body)
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    return f'<div class="table">{table}</div>'  # a wide table scrolls, the page does not


def _cell(text: str) -> str:
    kind = ' class="number"' if NUMBER.fullmatch(text) else ""
    return f"<td{kind}>{escape(text)}</td>"
