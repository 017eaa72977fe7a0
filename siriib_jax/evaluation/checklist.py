"""The gradient-masking checklist (Athalye et al. 2018, §3; Carlini et al. 2019, "On
evaluating adversarial robustness", §5; Croce & Hein 2020, §5) run on every report.

Each item compares accuracies the evaluation measured; it passes, fails, or is skipped
(`passed = None`) when the evaluation did not run the attacks it needs. Comparisons between
attacks allow a slack of `max(tolerance, 1 / N)` (at least one point of N): random starts
alone move a few points.

1. `large_eps`: PGD at ε = `large_eps` (64/255) leaves ≤ `max_large_eps_accuracy` (1 %).
   An ε that large can turn any image into another class; a model that keeps accuracy
   there hides its gradients rather than being robust.
2. `more_steps`: for each norm and loss (PGD, C&W), more steps are no weaker:
   acc(N steps) ≤ acc(M steps) + slack for N > M. Otherwise the optimisation is stuck.
3. `autoattack_strongest`: AutoAttack (the ensemble, per-example worst case) is no weaker
   than any other attack of its norm: acc(AA) ≤ acc(attack) + slack.
4. `black_box_weaker`: Square, a black-box search, breaks no more than the white-box
   attacks: with AutoAttack, the points Square breaks after APGD-CE, APGD-T and FAB-T have
   failed are ≤ slack × N; without it, acc(Square) ≥ min acc(white-box) − slack. A
   gradient-free search beating the gradient is the signature of masked gradients.
5. `adaptive`: no adaptive loss does better for the attacker than CE (Table 4):
   acc(loss) ≥ acc(L_CE) − slack for every loss. The direction: if PGD through SiRIIB's
   internals (`L_svd`, `L_info`) breaks points that PGD on the logits cannot, the CE-based
   numbers overestimate robustness (the module obfuscates the logits' gradient), so a
   *lower* adaptive accuracy is the masking signal; a higher one only means that loss is a
   weaker attack.
"""

import dataclasses
from typing import Optional

from siriib_jax.attacks.registry import WHITE_BOX_FAMILIES


@dataclasses.dataclass
class CheckItem:
  """One item: `passed` True / False / None (skipped), what was compared, and the numbers
  (accuracies in [0, 1])."""
  name: str
  passed: Optional[bool]
  details: str
  values: dict


def _pct(a: float) -> str:
  return f"{100 * a:.2f}%"


def large_eps(rows, max_accuracy: float) -> CheckItem:
  row = next((r for r in rows if r.group == "checklist"), None)
  if row is None:
    return CheckItem("large_eps", None, "no large-ε PGD run", {})
  return CheckItem("large_eps", row.accuracy <= max_accuracy,
                   f"{row.label} at ε = {row.eps:.4f}: {_pct(row.accuracy)} "
                   f"(must be ≤ {_pct(max_accuracy)})",
                   {"accuracy": row.accuracy, "eps": row.eps, "max_accuracy": max_accuracy})


def more_steps(rows, slack: float) -> CheckItem:
  pairs = []
  for norm in ("linf", "l2"):
    for family in ("pgd", "cw"):
      runs = sorted((r for r in rows if r.group == norm and r.family == family and r.steps),
                    key=lambda r: r.steps)
      pairs += [(a, b) for a, b in zip(runs, runs[1:])]
  if not pairs:
    return CheckItem("more_steps", None, "no attack run with two step counts", {})
  bad = [(a, b) for a, b in pairs if b.accuracy > a.accuracy + slack]
  text = "; ".join(f"{b.label} {_pct(b.accuracy)} ≤ {a.label} {_pct(a.accuracy)} ({a.norm})"
                   for a, b in pairs)
  return CheckItem("more_steps", not bad, text + f" (slack {_pct(slack)})",
                   {f"{b.name}-vs-{a.name}": [b.accuracy, a.accuracy] for a, b in pairs})


def autoattack_strongest(rows, slack: float) -> CheckItem:
  pairs = []
  for aa in (r for r in rows if r.family == "autoattack"):
    pairs += [(aa, r) for r in rows if r.group == aa.group and r is not aa]
  if not pairs:
    return CheckItem("autoattack_strongest", None, "AutoAttack and another attack of its "
                     "norm are needed", {})
  bad = [(aa, r) for aa, r in pairs if aa.accuracy > r.accuracy + slack]
  text = "; ".join(f"{aa.label} {_pct(aa.accuracy)} ≤ {r.label} {_pct(r.accuracy)} "
                   f"({aa.norm})" for aa, r in pairs)
  return CheckItem("autoattack_strongest", not bad, text + f" (slack {_pct(slack)})",
                   {f"{aa.name}-vs-{r.name}": [aa.accuracy, r.accuracy] for aa, r in pairs})


def black_box_weaker(rows, components: dict, slack: float) -> CheckItem:
  for aa in (r for r in rows if r.family == "autoattack"):
    cascade = components.get(aa.name, {})
    if "square" not in cascade:
      continue
    extra = cascade["square"]["broken"] / aa.total
    return CheckItem("black_box_weaker", extra <= slack,
                     f"Square broke {cascade['square']['broken']} of {aa.total} points that "
                     f"APGD-CE/APGD-T/FAB-T left robust ({aa.norm}): {_pct(extra)} "
                     f"(must be ≤ {_pct(slack)})",
                     {"square_after_white_box": extra, "slack": slack})
  for sq in (r for r in rows if r.family == "square" and r.group in ("linf", "l2")):
    white = [r for r in rows if r.group == sq.group and r.family in WHITE_BOX_FAMILIES]
    if white:
      best = min(white, key=lambda r: r.accuracy)
      return CheckItem("black_box_weaker", sq.accuracy >= best.accuracy - slack,
                       f"Square {_pct(sq.accuracy)} ≥ {best.label} {_pct(best.accuracy)} "
                       f"({sq.norm}, slack {_pct(slack)})",
                       {"square": sq.accuracy, "white_box": best.accuracy, "slack": slack})
  return CheckItem("black_box_weaker", None, "neither AutoAttack nor Square with a "
                   "white-box attack of the same norm was run", {})


def adaptive(rows, slack: float) -> CheckItem:
  table = {r.attack: r for r in rows if r.group == "adaptive"}
  if "ce" not in table or len(table) < 2:
    return CheckItem("adaptive", None, "no adaptive attacks were run (`adaptive` in the "
                     "attack list, on a SiRIIB model)", {})
  ce = table["ce"]
  worst = min(table.values(), key=lambda r: r.accuracy)
  return CheckItem("adaptive", worst.accuracy >= ce.accuracy - slack,
                   f"lowest adaptive accuracy {_pct(worst.accuracy)} ({worst.label}) ≥ "
                   f"L_CE {_pct(ce.accuracy)} − slack {_pct(slack)}",
                   {r.attack: r.accuracy for r in table.values()})


def run_checklist(rows, components: dict, config) -> list[CheckItem]:
  """All items for the report's `rows` (`report.Row`) and AutoAttack `components` (the
  report's name -> component -> counts); `config` is `config.evaluation.checklist`."""
  total = max((r.total for r in rows), default=1)
  slack = max(config.tolerance, 1.0 / total)
  return [large_eps(rows, config.max_large_eps_accuracy), more_steps(rows, slack),
          autoattack_strongest(rows, slack), black_box_weaker(rows, components, slack),
          adaptive(rows, slack)]
