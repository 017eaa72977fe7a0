"""Which padded size a chunk runs at (`attacks/sizes.py`): a compiled one only where its
extra padding is expected to cost less than compiling."""

import pytest

from siriib_jax.attacks.sizes import CostBook, Costs, choose_size


def test_without_measurements_the_ladder_size_is_kept():
  assert choose_size(60, 60, Costs(frozenset({64})), units=19, limit=500) == 60
  assert choose_size(60, 60, Costs(frozenset({64}), compile_s=1.0), 19, 500) == 60


def test_a_compiled_size_is_reused_when_padding_costs_less_than_compiling():
  costs = Costs(frozenset({64, 224}), compile_s=1.0, unit_s=1e-3)
  # 4 padded points × 19 iterations × 1 ms = 0.076 s < 1 s: the compiled 64.
  assert choose_size(60, 60, costs, units=19, limit=500) == 64
  # 164 padded points × 19 × 1 ms = 3.1 s > 1 s: compile 60.
  assert choose_size(60, 60, costs._replace(sizes=frozenset({224})), 19, 500) == 60


def test_a_size_that_is_compiled_already_is_kept():
  costs = Costs(frozenset({60, 64}), compile_s=1.0, unit_s=1e-3)
  assert choose_size(60, 60, costs, 19, 500) == 60


def test_only_sizes_within_the_limit_and_the_device_multiple_are_reused():
  costs = Costs(frozenset({63, 64}), compile_s=10.0, unit_s=1e-3)
  assert choose_size(60, 60, costs, 1, limit=62) == 60
  assert choose_size(60, 60, costs, 1, limit=500, multiple=2) == 64


def test_bad_sizes_raise():
  with pytest.raises(ValueError, match="n ≤ size"):
    choose_size(8, 4, Costs(), 1, 16)


def test_the_book_measures_a_new_size_beyond_its_expected_run():
  book = CostBook()
  # First call: 3 s, 2 s of them XLA's compilation; run cost from the rest.
  book.record("advance", size=64, units=10, seconds=3.0, compile_s=2.0)
  assert book.get("advance") == Costs(frozenset({64}), 2.0, pytest.approx(1.0 / 640))
  book.record("advance", size=64, units=10, seconds=0.64, compile_s=0.0)  # Run only.
  assert book.get("advance") == Costs(frozenset({64}), 2.0, pytest.approx(1e-3))
  # A new size, its program loaded from the persistent cache (no compile event): 0.5 s
  # beyond the expected 32 × 10 × 1 ms.
  book.record("advance", size=32, units=10, seconds=0.82, compile_s=0.0)
  assert book.get("advance") == Costs(frozenset({32, 64}), pytest.approx(0.5),
                                      pytest.approx(1e-3))
  assert book.get("other") == Costs()


def test_a_chunk_size_is_decided_once_per_program_and_point_count():
  book = CostBook()
  book.record("advance", size=64, units=10, seconds=3.0, compile_s=2.0)
  assert book.size_for("advance", 60, 60, units=10, limit=500) == 64
  book.record("advance", size=64, units=10, seconds=300.0, compile_s=0.0)  # Now slow.
  assert book.size_for("advance", 60, 60, units=10, limit=500) == 64  # As decided.
  assert book.size_for("advance", 59, 60, units=10, limit=500) == 60  # Decided anew.


def test_a_chunk_with_more_work_to_come_is_decided_anew():
  """The same 60 points in a 10-iteration segment and with 1,000 iterations still to come:
  4 padded points cost 4 · 10 · 1/640 s < 2 s of compilation in the first, 6.25 s > 2 s in
  the second."""
  book = CostBook()
  book.record("advance", size=64, units=10, seconds=3.0, compile_s=2.0)
  assert book.size_for("advance", 60, 60, units=10, limit=500) == 64
  assert book.size_for("advance", 60, 60, units=1000, limit=500) == 60
