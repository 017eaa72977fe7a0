"""Robustness evaluation (paper §5.1, §5.5, §3.1; SPEC §5; docs/evaluation.md).

  report = evaluate_robustness(model, variables, config, data_or_points, directory=workdir)
  summary = svd_study(model, variables, config, data_or_points, directory=workdir)

`evaluate_robustness` runs `config.evaluation.attacks` (clean, PGD, C&W, AutoAttack under
L∞ and L2, the adaptive Table 4) and the gradient-masking checklist; `svd_study` the
singular-value swap of §3.1. A pure library: `siriib_jax/evaluate.py` is the entry point of
`main.py --mode=eval|svd_study`.
"""

from siriib_jax.evaluation.adaptive import TABLE4_LOSSES, Target, adaptive_pgd, loss_weights
from siriib_jax.evaluation.attack_specs import AttackSpec, build_attack, parse_spec
from siriib_jax.evaluation.batching import select_points
from siriib_jax.evaluation.checklist import CheckItem, run_checklist
from siriib_jax.evaluation.progress import ProgressLog
from siriib_jax.evaluation.report import Report, Row, to_markdown, write_report
from siriib_jax.evaluation.robustness import evaluate_robustness, load_points
from siriib_jax.evaluation.svd_study import svd_study, swap_accuracies

__all__ = ["AttackSpec", "CheckItem", "ProgressLog", "Report", "Row", "TABLE4_LOSSES", "Target",
           "adaptive_pgd", "build_attack", "evaluate_robustness", "load_points",
           "loss_weights", "parse_spec", "run_checklist", "select_points", "svd_study",
           "swap_accuracies", "to_markdown", "write_report"]
