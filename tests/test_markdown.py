"""`siriib_jax.markdown.table`."""

import pytest

from siriib_jax import markdown


def test_table_has_header_rule_and_one_line_per_row():
  assert markdown.table(["a", "b"], [[1, "x"], [2.5, None]]) == (
      "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 | None |")


def test_table_escapes_pipes_and_newlines_in_cells():
  assert markdown.table(["h"], [["a|b\nc"]]).splitlines()[2] == "| a\\|b c |"


def test_table_refuses_a_row_of_another_width():
  with pytest.raises(ValueError, match="row 1 has 1 cells, the header 2"):
    markdown.table(["a", "b"], [[1, 2], [3]])


def test_table_without_rows_is_header_and_rule():
  assert markdown.table(["only"], []) == "| only |\n|---|"
