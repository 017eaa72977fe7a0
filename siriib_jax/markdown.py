"""Markdown tables: the one place the reports, the paper and the studies build them.

    markdown.table(["attack", "accuracy (%)"], [["PGD-20", "43.10"]])
"""

from typing import Any, Sequence


def _cell(value: Any) -> str:
  return str(value).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub-flavoured Markdown table, one line per row, no trailing newline.

  Args:
    header: the column titles.
    rows: each a sequence of as many cells as `header` (any values, shown with `str`;
      a `|` inside a cell is escaped, a newline becomes a space).
  Raises:
    ValueError: a row with another number of cells than `header`.
  """
  for i, row in enumerate(rows):
    if len(row) != len(header):
      raise ValueError(f"row {i} has {len(row)} cells, the header {len(header)}: {row!r}")
  lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)
