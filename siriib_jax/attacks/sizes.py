"""Which padded size a chunk of points runs at: a size already compiled when padding it costs
less than compiling a new one (the runner's fixed costs on a cheap model or an accelerator).

A per-point program compiles once per chunk size. `choose_size` keeps the runner's ladder
(`runner.bucket_size`) unless a larger size of the same program is compiled already and
running the extra padded points is expected to cost less than a new size, both measured in
this process from the calls' own time (`CostBook`).
"""

import threading
from typing import Dict, Hashable, NamedTuple, Optional

import jax

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class _CompileMeter:
  """Seconds of XLA backend compilation in this process so far (`jax.monitoring`); the
  listener is registered on first use."""

  def __init__(self):
    self._seconds, self._lock, self._registered = 0.0, threading.Lock(), False

  def _listen(self, event, duration, **unused_kwargs):
    if event == COMPILE_EVENT:
      with self._lock:
        self._seconds += duration

  def seconds(self) -> float:
    if not self._registered:
      self._registered = True
      jax.monitoring.register_event_duration_secs_listener(self._listen)
    with self._lock:
      return self._seconds


METER = _CompileMeter()


class Costs(NamedTuple):
  """What one program has cost so far: `sizes`, the chunk sizes it has run at; `compile_s`,
  seconds its latest new size cost beyond running (tracing, lowering, compilation:
  `CostBook.record`); `unit_s`, seconds of its latest run per padded point and unit of work
  (an iteration of a loop; 1 for a single pass)."""
  sizes: frozenset = frozenset()
  compile_s: Optional[float] = None
  unit_s: Optional[float] = None


def choose_size(n: int, size: int, costs: Costs, units: float, limit: int,
                multiple: int = 1) -> int:
  """The size to run a chunk of n points at: `size` (the ladder's, ≥ n), or the smallest
  compiled size s of `costs.sizes` with size < s ≤ `limit`, s a multiple of `multiple`,
  whose extra padding (s − size) · units · unit_s is expected to cost less than compiling
  `size` (`compile_s`); `units`: the work per point of every call still to come at about
  this size (e.g. iterations × the targets left). Without both measurements, `size`.

  Raises:
    ValueError: n < 1 or size < n.
  """
  if n < 1 or size < n:
    raise ValueError(f"need 1 ≤ n ≤ size, got n={n}, size={size}")
  if size in costs.sizes or costs.compile_s is None or costs.unit_s is None:
    return size
  larger = [s for s in costs.sizes if size < s <= limit and s % multiple == 0]
  if larger and (min(larger) - size) * units * costs.unit_s < costs.compile_s:
    return min(larger)
  return size


class CostBook:
  """`Costs` per program and signature (the shapes and structure it is called with, e.g.
  the model's parameters), updated after every call (`record`)."""

  def __init__(self):
    self._costs: Dict[Hashable, Costs] = {}
    self._chosen: Dict[Hashable, int] = {}

  def get(self, key: Hashable) -> Costs:
    return self._costs.get(key, Costs())

  def size_for(self, key: Hashable, n: int, size: int, units: float, limit: int,
               multiple: int = 1) -> int:
    """`choose_size` for a chunk of n points of the program `key` with `units` of work to
    come, decided once: a later such chunk runs at the same size (so a repeated evaluation
    compiles nothing new and cuts its points alike); a chunk of n points with more work to
    come is decided anew."""
    memo = (key, n, size, units, limit, multiple)
    if memo not in self._chosen:
      self._chosen[memo] = choose_size(n, size, self.get(key), units, limit, multiple)
    return self._chosen[memo]

  def record(self, key: Hashable, size: int, units: float, seconds: float,
             compile_s: float = 0.0) -> None:
    """One call of the program `key` on `size` padded points and `units` of work each,
    `seconds` in all, `compile_s` of them in XLA's backend compilation. The program's first
    call measures the cost of a size by its compilation alone (its tracing and lowering go
    to the run, so the run is overestimated and reuse underestimated). A later new size's
    first call also traces, lowers and compiles (or loads from the persistent cache) its
    program: its time beyond the run expected from `unit_s` is the cost of a new size.
    Calls of a size already run measure `unit_s`."""
    old = self.get(key)
    work = size * max(units, 1e-9)
    if size in old.sizes:
      self._costs[key] = old._replace(unit_s=seconds / work)
    elif old.unit_s is None:
      self._costs[key] = Costs(frozenset({size}), compile_s,
                               max(seconds - compile_s, 0.0) / work)
    else:
      self._costs[key] = Costs(old.sizes | {size},
                               max(seconds - old.unit_s * work, compile_s), old.unit_s)


def signature(call, *args) -> Hashable:
  """A key for `call` that changes where its compiled program would: the pytree structure of
  `args` and each leaf's shape and dtype (pass what does not carry points whole, and one
  point of what does, e.g. `x[0]`)."""
  leaves, tree = jax.tree_util.tree_flatten(args)
  return call, tree, tuple((getattr(a, "shape", ()), str(getattr(a, "dtype", type(a))))
                           for a in leaves)
