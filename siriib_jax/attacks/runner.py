"""The host-side runner: `attack_points` runs one attack on the points still robust, each
point alone with its own key, in padded chunks sharded over the devices (AutoAttack's
components and every attack of an evaluation run through it).

Selection runs on the host (`attack_points`, which the evaluation also uses for an attack
run alone), since shapes inside `jit` are static: the points to attack are gathered, cut
into chunks of at most `bucket` (default: the batch size) and each chunk is padded, by
repeating its first point, to the next size with at most four significant bits
(m · 2^k with m < 16, at most `bucket`): a chunk carries less than 1/8 of padding, and an
attack, jitted once, compiles for at most 8 chunk sizes per octave of chunk size (16 below
16 points) — in practice one or two per attack and evaluation, as only the last chunk of
each call is partial. Square (`base.QueryAttack`) runs its queries in segments of
`compact_every` iterations and gathers, between segments, the points not yet broken, in
chunks padded with at most three significant bits (m · 2^k, m ∈ {4, …, 7}: at most four
sizes per octave and less than 1/4 of padding, so that a slowly shrinking set of points
compiles a few sizes only; BENCHMARKS.md §2g compares two, three and four bits) — on
XLA:CPU, in pieces of 32, 16 and 8 points instead (`chunk_plan`: three sizes, less
padding). A partial chunk runs at a larger size already compiled where its padding, over
the runs still to come, is expected to cost less than a new size (`sizes.choose_size`,
from this process's measured times): on a cheap model or an accelerator a compilation
costs more than many padded points. APGD and APGD-T (`base.Stepped`) run likewise in
segments of iterations, cut at `apgd.segment_starts` (5, 10, 22 and 41 of 100), each on the
points not yet broken: a point's result is its first successful iterate, so its later
iterations would change nothing. A run's start (and Square's initial perturbation) is
iteration −1 of its first segment: one program per chunk size does the whole run.

Exactly as if every point were attacked: each point is attacked alone — the attack is
`jax.vmap`ped over points, each a batch of one with its own PRNG key
`fold_in(key, index)` (`index`: the point's position in the evaluation, not in its chunk;
with several hosts, each attacking its share, its position among every host's points)
— so its x_adv and success depend neither on which other points share its chunk, nor on
the padding, nor on the chunk sizes. Attacking only the points still robust therefore
gives, point by point, the robust flags and the x_adv of the broken points that attacking
every point gives (`only_robust=False`; tests/test_autoattack.py) — x_adv up to float32
rounding, as XLA compiles one program per chunk size (FAB-T's differ by 1 ulp). Keys: component i of
the ensemble draws from `fold_in(key_attacks, i)` (`key_clean, key_attacks =
split(key)`), target rank r of a targeted attack from `fold_in(·, r)`, and point j from
`fold_in(·, index[j])`; inside, restart r of Square from `fold_in(·, r)` and its
iteration i from `fold_in(·, i)`, and iteration i of an APGD run from `fold_in(·, i)` of its
run's key, in whichever segment it runs.
With a `mesh` (`parallel.data_mesh`), each chunk is padded to a multiple of the mesh's
size and sharded over its `data` axis (the model replicated): a point's result does not
depend on the device it runs on either.
Pass `logits_fn` as a `jax.tree_util.Partial(apply_fn, params)`: it is then a jit argument
(a plain function is wrapped, and any arrays it closes over become compile-time constants).
"""

import functools
import os
import time
from typing import Callable, List, NamedTuple, Optional, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from siriib_jax.attacks.base import (QueryAttack, Stepped, TargetedAttack,
                                     misclassified)
from siriib_jax.attacks.gradients import Candidate, worst_case
from siriib_jax.attacks.sizes import METER, CostBook, signature
from siriib_jax.attacks.square import _raise_if_nan
from siriib_jax.attacks.threat_model import check_images

# A chunk is padded to the next size with at most this many significant bits; the chunks
# of Square's segments with at most `QUERY_SIGNIFICANT_BITS`.
SIGNIFICANT_BITS = 4
QUERY_SIGNIFICANT_BITS = 3
# Square gathers the points still to attack every this many queries.
COMPACT_EVERY = 100
# On XLA:CPU a query loop's points run in pieces of at most this many (`chunk_plan`).
CPU_PIECE = 32
# The mesh axis the points are sharded over (`parallel.DATA_AXIS`).
DATA_AXIS = "data"
# LLVM's optimisation level for the per-point programs on XLA:CPU (XLA's default: 2): on the
# one CPU measured (AMD EPYC, BENCHMARKS.md §2k) level 1 compiled them about a quarter
# faster, and they ran as fast.
CPU_OPTIMIZATION_LEVEL = 1
# What each per-point program has cost in this process (`sizes.choose_size`).
_COSTS = CostBook()


def bucket_size(n: int, bucket: int, bits: int = SIGNIFICANT_BITS, multiple: int = 1) -> int:
  """The padded size of a chunk of 1 ≤ n ≤ bucket points: n rounded up to m · 2^k with
  m < 2^bits (less than n / 2^(bits − 1) of padding), at most `bucket`, then up to a
  multiple of `multiple` (the number of devices it is sharded over)."""
  shift = max(n.bit_length() - bits, 0)
  size = min(-(-n >> shift) << shift, bucket)
  return -(-size // multiple) * multiple


def chunk_plan(n: int, bucket: int, bits: int = SIGNIFICANT_BITS, multiple: int = 1,
               piece: int = 0) -> List[Tuple[int, int]]:
  """How n ≥ 1 points are cut: [(count, size)], in order, `count` consecutive points run
  padded to `size` (a multiple of `multiple`, the number of devices they are sharded over).

  Without `piece`: chunks of `bucket`, the last padded to `bucket_size` (few, large calls;
  an accelerator's time hardly grows with the batch). With `piece` (a query loop's segments
  on XLA:CPU, `CPU_PIECE`): chunks of c = min(piece, bucket), the rest in pieces of c / 2
  and c / 4 (rounded up to multiples of `multiple`), largest first, the last padded: three
  sizes are ever compiled, and less than c / 4 points are padding. The choice rests on
  measurements on one CPU model (BENCHMARKS.md §2i): there a forward pass cost no more per
  point in pieces of 32 than in chunks of 128–160, and less for a small model, while APGD
  gained nothing from pieces and paid their compilations, so gradient attacks keep whole
  chunks.
  """
  if not piece:
    plan = [(bucket, bucket)] * (n // bucket)
    return plan + ([(n % bucket, bucket_size(n % bucket, bucket, bits, multiple))]
                   if n % bucket else [])
  size = -(-min(piece, bucket) // multiple) * multiple
  unit = -(-max(size // 4, 1) // multiple) * multiple
  plan = [(size, size)] * (n // size)
  rest = n % size
  units = -(-rest // unit)
  for k in reversed(range(units.bit_length())):
    if units >> k & 1 and rest > 0:
      plan.append((min(unit << k, rest), unit << k))
      rest -= unit << k
  return plan


def _piece(mesh: Optional[Mesh]) -> int:
  """`CPU_PIECE` where the points run on CPU devices, else 0 (`chunk_plan`; query loops)."""
  device = mesh.devices.flat[0] if mesh is not None else jax.devices()[0]
  return CPU_PIECE if device.platform == "cpu" else 0


class Progress(NamedTuple):
  """What `attack_points` reports after each chunk (or each segment of Square's queries or
  APGD's iterations).

  Attributes:
    stage: '' for a plain attack; 'target r/n' for a targeted one; 'restart r/n' for a
      query loop.
    done: points of the stage finished (attacked, or left the query loop).
    total: points of the stage.
    robust: points of the whole call not broken so far (clean errors count as broken).
    fraction: the part of the stage's work done, in [0, 1] (points; for a query loop,
      point-queries, the rest estimated from the points still in the loop).
    seconds: since the stage began.
  """
  stage: str
  done: int
  total: int
  robust: int
  fraction: float
  seconds: float


ProgressFn = Callable[[Progress], None]


@functools.partial(jax.jit, static_argnums=2)
def _logits(logits_fn, x, eot_samples: int):
  return logits_fn(x, jax.random.key(0)) if eot_samples else logits_fn(x)


def num_classes(logits_fn, x, eot_samples: int) -> int:
  """K from the static shape of the logits on one point: traced abstractly (and the trace
  cached, so that a rerun traces nothing), nothing compiled."""
  return int(_logits.eval_shape(logits_fn, x[:1], eot_samples).shape[-1])


def per_point(fn) -> Callable:
  """`fn(logits_fn, x, y, key, state, *shared)` on a batch → the jitted
  `(logits_fn, x (B, …), y (B,), key, ids (B,), state, *shared)`, in which point b runs
  alone (a batch of one) with the key `fold_in(key, ids[b])`; `state` is a pytree of
  per-point arrays (leading B), `shared` the same for every point (e.g. a target rank)."""

  def run(logits_fn, x, y, key, ids, state, *shared):
    def one(x1, y1, key1, state1):
      add = lambda a: a[None]
      out = fn(logits_fn, add(x1), add(y1), key1, jax.tree_util.tree_map(add, state1),
               *shared)
      return jax.tree_util.tree_map(lambda a: a[0], out)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, ids)
    return jax.vmap(one)(x, y, keys, state)

  return jax.jit(run, compiler_options=compiler_options())


def compiler_options() -> Optional[dict]:
  """XLA options of the per-point programs: on XLA:CPU, `CPU_OPTIMIZATION_LEVEL` for
  LLVM's code generation, unless `XLA_FLAGS` sets the level (None: XLA's defaults)."""
  if jax.default_backend() != "cpu" or "xla_backend_optimization_level" in os.environ.get(
      "XLA_FLAGS", ""):
    return None
  return {"xla_backend_optimization_level": CPU_OPTIMIZATION_LEVEL}


class _Compiled(NamedTuple):
  call: Optional[Callable] = None   # Plain attack, or one target of a targeted attack.
  score: Optional[Callable] = None  # A query loop's margin and verdict (`_score`).
  advance: Optional[Callable] = None  # A query loop's or a `Stepped` run's iterations.
  finish: Optional[Callable] = None  # A `Stepped` run's result.


def _score(attack: QueryAttack, logits_fn, x, y):
  """A query loop's margin at x and whether x is misclassified (`base.misclassified`), from
  one forward pass: the clean margins and the final verdict share one program."""
  logits = logits_fn(x)
  return attack.margin(logits, y), misclassified(logits, y)


def clear_caches() -> None:
  """Forgets every compiled program and measured cost (`jax.clear_caches`, the per-point
  programs, `sizes.CostBook`): the next evaluation starts as in a new process."""
  global _COSTS
  jax.clear_caches()
  _compiled.cache_clear()
  _COSTS = CostBook()


def _stepped(attack) -> Optional[Stepped]:
  return getattr(attack, "stepped", None)


@functools.lru_cache(maxsize=256)
def _compiled(attack) -> _Compiled:
  """The jitted per-point pieces of `attack` (cached: a rerun reuses its compilations)."""
  stepped = _stepped(attack)
  if stepped is not None:
    return _Compiled(
        advance=per_point(lambda f, x, y, k, s, rank, r, a, b: stepped.advance(
            f, x, y, k, rank, r, s, a, b)),
        finish=per_point(lambda f, x, y, k, s: stepped.finish(s)))
  if isinstance(attack, QueryAttack):
    return _Compiled(
        score=per_point(lambda f, x, y, k, s: _score(attack, f, s, y)),
        advance=per_point(lambda f, x, y, k, s, r, a, b: attack.advance(f, x, y, k, r, s, a,
                                                                           b)))
  if isinstance(attack, TargetedAttack):
    return _Compiled(call=per_point(
        lambda f, x, y, k, s, rank: attack.single_target(f, x, y, k, rank)))
  return _Compiled(call=per_point(lambda f, x, y, k, s: attack(f, x, y, k)))


class Points(NamedTuple):
  """The points of one call: x (B, H, W, C) float32 in [0, 1]; y (B,) int labels; index (B,)
  int, their positions in the evaluation (point j draws from `fold_in(key, index[j])`)."""
  x: np.ndarray
  y: np.ndarray
  index: np.ndarray


class Found(NamedTuple):
  """What a call has found so far, updated in place: success (B,) bool, the points broken
  (clean errors included); x_adv (B, H, W, C) float32."""
  success: np.ndarray
  x_adv: np.ndarray


class Layout(NamedTuple):
  """How the points run: in chunks of at most `bucket`, sharded over `mesh`'s `data` axis
  (None: one device); `only_robust`: only on the points not yet broken; `broken_only`: an
  attack's x_adv is kept only where it breaks the point; `compact_every`: a query loop's
  queries between two gatherings of the points still in it."""
  bucket: int
  mesh: Optional[Mesh] = None
  only_robust: bool = True
  broken_only: bool = True
  compact_every: int = COMPACT_EVERY


def _record(which: np.ndarray, broke: np.ndarray, x_found: np.ndarray, found: Found,
            broken_only: bool) -> None:
  """Writes what one pass found on the points `which` (indices): the x_adv `x_found` of the
  points not already broken (where `broke`, if `broken_only`), and `broke` into `success`."""
  write = ~found.success[which] & (broke | (not broken_only))
  found.x_adv[which[write]] = x_found[write]
  found.success[which] |= broke


def _map_points(call, logits_fn, points: Points, key, which: np.ndarray, layout: Layout, *,
                state=(), shared=(), bits=SIGNIFICANT_BITS, piece: int = 0,
                after_chunk=None, units: float = 1.0, to_come: Optional[float] = None):
  """`call` (from `per_point`) on the points `which` (indices into `points`), cut by
  `chunk_plan` (chunks of at most `layout.bucket`); `state`: per-point arrays (leading
  len(which)). A partial chunk runs at a size already compiled where that is expected to
  cost less than compiling its own (`sizes.choose_size`; `units`: the work per point of
  this call, e.g. its iterations; `to_come`: the work per point of this call and those
  still to come at about this size, in the same unit, default `units`). Returns the
  outputs of those points (NumPy, leading len(which)); `after_chunk(chunk, outputs)` after
  each (`chunk`: a slice of `which`)."""
  outputs = None
  mesh = layout.mesh
  multiple = mesh.size if mesh is not None else 1
  sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS)) if mesh is not None else None
  cost_key = (signature(call, logits_fn, points.x[:1], points.y[:1],
                        jax.tree_util.tree_map(lambda a: a[:1], state), shared)
              if len(which) else None)
  start = 0
  for n, size in (chunk_plan(len(which), layout.bucket, bits, multiple, piece)
                  if len(which) else []):
    if not piece:
      size = _COSTS.size_for(cost_key, n, size, units if to_come is None else to_come,
                             layout.bucket, multiple)
    chunk = slice(start, start + n)
    start += n
    pad = np.concatenate([np.arange(chunk.start, chunk.stop),
                          np.full(size - n, chunk.start)])
    ids = which[pad]
    args = (points.x[ids], points.y[ids], np.asarray(points.index[ids], np.int32),
            jax.tree_util.tree_map(lambda a: a[pad], state))
    if sharding is not None:
      args = jax.device_put(args, sharding)
    began, compiled_before = time.perf_counter(), METER.seconds()
    out = call(logits_fn, args[0], args[1], key, args[2], args[3], *shared)
    out = jax.tree_util.tree_map(lambda a: np.asarray(a)[:n], out)
    _COSTS.record(cost_key, size, units, time.perf_counter() - began,
                  METER.seconds() - compiled_before)
    if outputs is None:
      outputs = jax.tree_util.tree_map(
          lambda a: np.empty((len(which),) + a.shape[1:], a.dtype), out)
    jax.tree_util.tree_map(lambda o, a: o.__setitem__(chunk, a), outputs, out)
    if after_chunk is not None:
      after_chunk(chunk, out)
  return outputs


def map_points(call, logits_fn, x: np.ndarray, y: np.ndarray, key: jax.Array,
               index: np.ndarray, bucket: int, mesh: Optional[Mesh] = None):
  """`call` (from `per_point`) on every point of x (B, H, W, C) and y (B,), in chunks of at
  most `bucket` sharded over `mesh`; point j keyed by `fold_in(key, index[j])`. Returns the
  outputs (NumPy, leading B)."""
  return _map_points(call, logits_fn, Points(x, y, np.asarray(index)), key,
                     np.arange(len(x)), Layout(bucket, mesh))


def attack_points(attack, logits_fn, x: np.ndarray, y: np.ndarray, key: jax.Array,
                  todo: np.ndarray, success: np.ndarray, x_adv: np.ndarray, *,
                  index: Optional[np.ndarray] = None, bucket: Optional[int] = None,
                  broken_only: bool = True, only_robust: bool = True,
                  compact_every: int = COMPACT_EVERY, eot_samples: int = 0,
                  mesh: Optional[Mesh] = None,
                  progress: Optional[ProgressFn] = None) -> np.ndarray:
  """Runs `attack` on the points `todo`, each alone with its own key (module doc).

  A targeted attack (`base.TargetedAttack`: APGD-T, FAB-T, Croce & Hein 2020) runs target
  rank after rank, each on the points of `todo` not yet broken; a query loop
  (`base.QueryAttack`: Square, Andriushchenko et al. 2020) runs its queries in segments of
  `compact_every`, each on the points still in the loop. With `only_robust=False` every
  point of `todo` is attacked by every target, in one segment: the same results point by
  point (the x_adv of a point broken by several targets is that of the first), at the cost
  of the points already broken.

  Args:
    attack: an `Attack` (also e.g. `adaptive.adaptive_pgd`), `TargetedAttack` or
      `QueryAttack`.
    logits_fn: what it attacks (a `jax.tree_util.Partial`, so that it is a jit argument).
    x: (B, H, W, C) float32 images in [0, 1]; y: (B,) int labels.
    key: the attack's PRNG key; point j draws from `fold_in(key, index[j])`.
    todo: (B,) bool, the points to attack.
    success: (B,) bool, the points already broken (clean errors included); updated.
    x_adv: (B, H, W, C) float32; the points of `todo` not already broken get the attack's
      x_adv where it breaks them (`broken_only`) or wherever it ran; updated.
    index: (B,) int, the points' positions in the evaluation (default 0 … B − 1).
    bucket: the largest chunk (default B).
    only_robust: False to attack every point of `todo` with every target and query.
    compact_every: queries between two gatherings of the points still to attack.
    eot_samples: > 0 for a stochastic `logits_fn(x, key)` (reads the class count).
    mesh: shard each chunk over its `data` axis (chunks padded to a multiple of its size).
    progress: called with a `Progress` after each chunk and segment.

  Returns:
    (B,) bool, the points this call broke that were not already in `success`.
  Raises:
    FloatingPointError: a query loop met a NaN margin (NaN logits), naming the points.
    ValueError: x is not finite or not in [0, 1] (`threat_model.check_images`).
  """
  x = check_images(x, "x")
  index = np.arange(len(x)) if index is None else np.asarray(index)
  points = Points(x, np.asarray(y), index)
  found = Found(success, x_adv)
  layout = Layout(min(bucket or len(x), len(x)) or 1, mesh, only_robust, broken_only,
                  compact_every)
  compiled = _compiled(attack)
  before = success.copy()

  def report(stage, done, total, fraction, started, pending=0):
    """`pending`: points broken in the stage so far, not yet recorded in `success`."""
    if progress is not None:
      progress(Progress(stage, int(done), int(total), int((~success).sum()) - int(pending),
                        float(fraction), time.perf_counter() - started))

  def plain(call, stage, k, shared=(), repeats=1):
    which = _to_attack(todo, success, only_robust)
    started = time.perf_counter()

    def after_chunk(chunk, out):
      _record(which[chunk], out.success, out.x_adv, found, broken_only)
      report(stage, chunk.stop, len(which), chunk.stop / len(which), started)

    if not len(which):
      report(stage, 0, 0, 1.0, started)
    _map_points(call, logits_fn, points, k, which, layout, shared=shared,
                after_chunk=after_chunk, to_come=repeats)

  def by_target(run):
    """`run(stage, key, rank, ranks_left)` for each target rank of a targeted attack (once,
    rank 0, for an untargeted one); `ranks_left` counts this one."""
    if not isinstance(attack, TargetedAttack):
      run("", key, 0, 1)
      return
    classes = num_classes(logits_fn, x, eot_samples)
    ranks = min(attack.n_target_classes, classes - 1)
    for rank in range(1, ranks + 1):
      run(f"target {rank}/{ranks}", jax.random.fold_in(key, rank), rank, ranks - rank + 1)

  if compiled.finish is not None:
    by_target(lambda stage, k, rank, ranks_left: _stepped_runs(
        _stepped(attack), compiled, logits_fn, points, k, rank, todo, found, layout,
        functools.partial(report, stage), ranks_left))
  elif compiled.call is not None:
    targeted = isinstance(attack, TargetedAttack)
    by_target(lambda stage, k, rank, ranks_left: plain(
        compiled.call, stage, k, (np.int32(rank),) if targeted else (), ranks_left))
  else:
    _query_loop(attack, compiled, logits_fn, points, key, todo, found, layout, report)
  return success & ~before


def _query_loop(attack: QueryAttack, compiled: _Compiled, logits_fn, batch: Points, key,
                todo: np.ndarray, found: Found, layout: Layout, report) -> None:
  """`attack_points` for a `QueryAttack`: its restarts, each in segments (module doc)."""
  only_robust = layout.only_robust
  points = _to_attack(todo, found.success, only_robust)
  if not len(points):
    report("", 0, 0, 1.0, time.perf_counter())
    return
  run = functools.partial(_map_points, logits_fn=logits_fn, points=batch, key=key,
                          layout=layout, bits=QUERY_SIGNIFICANT_BITS, piece=_piece(layout.mesh))
  best_x = batch.x[points].copy()
  best_margin, _ = run(compiled.score, which=points, state=best_x)
  invalid = np.isnan(best_margin)
  queries = attack.queries
  # Iteration −1, the initial perturbation, opens the first segment.
  bounds = [-1] + (list(range(layout.compact_every, queries, layout.compact_every))
                   if only_robust else [])
  for r in range(attack.restarts):
    started = time.perf_counter()
    stage = f"restart {r + 1}/{attack.restarts}" if attack.restarts > 1 else ""
    attacked = np.flatnonzero(best_margin > 0)
    if not len(attacked):
      report(stage, 0, 0, 1.0, started)
      break
    shared = (np.int32(r),)
    state = attack.fresh_state(batch.x[points[attacked]])
    work_done = 0
    for s, start in enumerate(bounds):
      stop = bounds[s + 1] if s + 1 < len(bounds) else queries
      live = np.flatnonzero((state.margin > 0) & ~state.invalid)
      if only_robust and not len(live):
        break
      if not only_robust:
        live = np.arange(len(attacked))
      segment = jax.tree_util.tree_map(lambda a: a[live], state)
      segment = run(compiled.advance, which=points[attacked][live], state=tuple(segment),
                    shared=shared + (np.int32(start), np.int32(stop)))
      for field, value in zip(state, segment):
        field[live] = value
      work_done += len(live) * (stop - start)
      still = int(((state.margin > 0) & ~state.invalid).sum())
      work_left = still * (queries - stop)
      report(stage, len(attacked) - (still if stop < queries else 0), len(attacked),
             work_done / max(work_done + work_left, 1), started)
    better = state.margin < best_margin[attacked]
    best_x[attacked[better]] = state.x[better]
    best_margin[attacked[better]] = state.margin[better]
    invalid[attacked] |= state.invalid
  if invalid.any():
    nan = np.zeros(len(batch.x), bool)
    nan[points[invalid]] = True
    _raise_if_nan(nan)
  # Success is re-read from one forward pass on x_adv, as `square` does.
  _, broke = run(compiled.score, which=points, state=best_x)
  _record(points, broke, best_x, found, layout.broken_only)


def _stepped_runs(stepped: Stepped, compiled: _Compiled, logits_fn, batch: Points, key, rank,
                  todo: np.ndarray, found: Found, layout: Layout, report,
                  ranks_left: int = 1) -> None:
  """`attack_points` for a `Stepped` attack, one target rank: its restarts, each on the
  points not yet broken, in segments cut at `stepped.starts`, each on the points not yet
  broken (with `only_robust=False`: every point of `todo`, in one segment)."""
  only_robust = layout.only_robust
  points = _to_attack(todo, found.success, only_robust)
  started = time.perf_counter()
  if not len(points):
    report(0, 0, 1.0, started)
    return
  run = functools.partial(_map_points, logits_fn=logits_fn, points=batch, key=key,
                          layout=layout)
  starts = stepped.starts if only_robust else stepped.starts[:1]
  work_done, best = 0, None
  already = found.success[points]
  for r in range(stepped.restarts):
    shared = (np.int32(rank), np.int32(r))
    attacked = (np.flatnonzero(~best.success) if only_robust and best is not None
                else np.arange(len(points)))
    if not len(attacked):
      break
    # The runs still to come (this one included) meet chunks of about these sizes again: a
    # size's padding is paid by this run's iterations still to come and every later run's,
    # its compilation once (`sizes.choose_size`).
    repeats = ranks_left * (stepped.restarts - r)
    state = stepped.fresh_state(batch.x[points[attacked]])
    for s, start in enumerate(starts):
      stop = starts[s + 1] if s + 1 < len(starts) else stepped.steps
      live = np.flatnonzero(~state.success) if only_robust else np.arange(len(attacked))
      if not len(live):
        break
      segment = run(compiled.advance, which=points[attacked][live],
                    state=jax.tree_util.tree_map(lambda a: a[live], state),
                    shared=shared + (np.int32(start), np.int32(stop)),
                    units=stop - start,
                    to_come=stepped.steps - start + (repeats - 1) * stepped.steps)
      jax.tree_util.tree_map(lambda whole, part: whole.__setitem__(live, part), state,
                             segment)
      work_done += len(live) * (stop - start)
      still = int((~state.success).sum())
      runs_left = stepped.restarts - r - 1
      work_left = still * ((stepped.steps - stop) + runs_left * stepped.steps)
      finished = stop == stepped.steps and not runs_left
      broken = np.zeros(len(points), bool) if best is None else best.success.copy()
      broken[attacked] |= state.success
      report(len(points) - (0 if finished else still), len(points),
             work_done / max(work_done + work_left, 1), started,
             pending=(broken & ~already).sum())
    result = run(compiled.finish, which=points[attacked], state=state, to_come=repeats)
    if best is None:
      best = result
      continue
    merged = worst_case(Candidate(*(a[attacked] for a in best)), result)
    for whole, part in zip(best, merged):
      whole[attacked] = np.asarray(part)
  _record(points, best.success, best.x_adv, found, layout.broken_only)


def _to_attack(todo: np.ndarray, success: np.ndarray, only_robust: bool) -> np.ndarray:
  """The indices of the points of `todo` to attack: those not yet broken (`only_robust`)."""
  return np.flatnonzero(todo & ~success) if only_robust else np.flatnonzero(todo)
