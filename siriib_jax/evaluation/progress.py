"""Progress of a long evaluation: per attack, and per AutoAttack component, the points
done, the points still robust, the elapsed time and an ETA, as absl log lines during the
run and, when a clu `MetricWriter` is given, as scalars.

The attacks report a `attacks.runner.Progress` after each chunk of points (and each
segment of Square's queries); `ProgressLog.attack(name)` turns those into

    robustness pgd20: 512/1000 points done, 301 still robust, <t> s elapsed, ETA <t> s
    robustness autoattack apgd-t target 3/9: 40/120 points done, 415 still robust, …

The ETA is that of the current stage (the attack, or AutoAttack's component and target):
its elapsed time × (work left / work done), work being points (Square: point-queries, the
queries left estimated from the points still in its loop). It counts the first chunk's
compilation, so early estimates run high.

With several hosts each reports its own share as it goes, the lines naming the host
(`robustness pgd20 (host 2/2): …`); once an attack's results are gathered, every host logs
the totals over all hosts (`ProgressLog.gathered`):

    robustness pgd20, all 2 hosts: 1000/1000 points done, 571 still robust, <t> s elapsed
"""

import time
from typing import Callable, Optional

from absl import logging

from siriib_jax.attacks.runner import Progress

PREFIX = "robustness"


def eta_seconds(progress: Progress) -> Optional[float]:
  """Seconds left in the stage, from its pace so far; None before any work is done."""
  if progress.fraction <= 0:
    return None
  return progress.seconds * (1 - progress.fraction) / progress.fraction


class ProgressLog:
  """Turns attack progress into log lines and, with a `writer`, metric scalars.

  Args:
    writer: a clu `metric_writers.MetricWriter` (or None). Each report writes, at a step
      counting the reports of this log, `progress/<attack>[/<component>]/points_done`,
      `.../points_robust`, `.../elapsed_s` and `.../eta_s`.
    host: '' on one host; with several, e.g. 'host 1/2', put in every line of this host's
      progress.
  """

  def __init__(self, writer=None, host: str = ""):
    self.writer = writer
    self.host = host
    self.step = 0

  def attack(self, name: str) -> Callable[[str, Progress], None]:
    """The `progress(component, Progress)` callback of the attack `name` (component: ''
    for an attack run alone)."""
    started = time.perf_counter()

    def report(component: str, progress: Progress) -> None:
      elapsed = time.perf_counter() - started
      eta = eta_seconds(progress)
      label = f"{name} ({self.host})" if self.host else name
      where = " ".join(part for part in (PREFIX, label, component, progress.stage) if part)
      logging.info("%s: %d/%d points done, %d still robust, %.1f s elapsed, ETA %s",
                   where, progress.done, progress.total, progress.robust, elapsed,
                   "unknown" if eta is None else f"{eta:.1f} s")
      if self.writer is not None:
        tag = "/".join(part for part in ("progress", name, component) if part)
        self.writer.write_scalars(self.step, {
            f"{tag}/points_done": progress.done, f"{tag}/points_robust": progress.robust,
            f"{tag}/elapsed_s": elapsed, f"{tag}/eta_s": -1.0 if eta is None else eta})
      self.step += 1

    return report

  def gathered(self, name: str, total: int, robust: int, seconds: float, hosts: int) -> None:
    """Logs (and writes, as `progress/<name>/all_hosts/{points_done,points_robust,
    elapsed_s}`) an attack's totals over all `hosts` once its results are gathered:
    `total` points, `robust` of them still robust, `seconds` of the slowest host."""
    logging.info("%s %s, all %d hosts: %d/%d points done, %d still robust, %.1f s elapsed",
                 PREFIX, name, hosts, total, total, robust, seconds)
    if self.writer is not None:
      tag = f"progress/{name}/all_hosts"
      self.writer.write_scalars(self.step, {f"{tag}/points_done": total,
                                            f"{tag}/points_robust": robust,
                                            f"{tag}/elapsed_s": seconds})
      self.step += 1
