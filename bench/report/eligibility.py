"""Which cells are ranked as results (issue 11; README "Regression checks" states the rules).

**Target tolerance.** A sparse run met its target when its achieved density is within 10% of
the target density: ``|(1 - achieved) - (1 - target)| <= 0.1 * (1 - target)``. Relative to the
*remaining* weights because that is what a comparison at a target holds fixed: ±0.05 at 50%,
±0.01 at 90%, ±0.001 at 99%. It admits every learned-sparsity point STR publishes under the
nominal level it is compared at (RAIVNLab/STR README, ResNet-50: 81.27% under 80%, 90.23% under
90%, 98.05% under 98%, 98.98% under 99%; ``shared/reference/methods.md`` §6) and rejects a run
with a multiple of its target's weights (EigenDamage at 0.62 under 80%: 1.9x). Fixed-budget
methods meet it by construction (``bench.budget`` fails them otherwise); STR and EigenDamage
can miss it. A cell with a seed that missed is shown as "missed target (achieved 0.85)" (the
cell's mean achieved sparsity), is not ranked in its target's section, and keeps its point at
its achieved sparsity in the plots.

**At chance.** A run collapsed when its top-1 is within noise of guessing: mean top-1 <=
100/C + 3 * 100 * sqrt(p (1 - p) / N), p = 1/C, C = classes, N = test examples (3 binomial
standard errors of a guesser's accuracy on N examples; 10 classes, 1000 examples: 12.85%).
Such a cell is shown "at chance" and not ranked; results without ``num_classes`` /
``test_examples`` (older result.json) are never marked.
"""

from __future__ import annotations

import math

TARGET_REL_TOL = 0.10
CHANCE_SIGMAS = 3.0


def missed_target(target: float, achieved: float) -> bool:
    """Whether a sparse run's achieved sparsity is outside the target tolerance (NaN: False)."""
    if not (math.isfinite(target) and math.isfinite(achieved)) or target <= 0:
        return False
    density = 1.0 - target
    return abs((1.0 - achieved) - density) > TARGET_REL_TOL * density + 1e-12


def chance_top1(num_classes: float) -> float:
    """Top-1 (%) of guessing uniformly: 100 / C."""
    return 100.0 / num_classes


def chance_limit(num_classes: float, test_examples: float) -> float:
    """The highest mean top-1 (%) still "at chance": 100/C + 3 binomial standard errors."""
    p = 1.0 / num_classes
    return 100.0 * (p + CHANCE_SIGMAS * math.sqrt(p * (1.0 - p) / test_examples))


def at_chance(top1: float, num_classes: float | None, test_examples: float | None) -> bool:
    if not num_classes or not test_examples or not math.isfinite(top1):
        return False
    if not (math.isfinite(num_classes) and math.isfinite(test_examples)):
        return False
    return top1 <= chance_limit(num_classes, test_examples)


def describe_missed(achieved: float) -> str:
    """'missed target (achieved 0.85)'; without a known achieved value, 'missed target'."""
    if not math.isfinite(achieved):
        return "missed target"
    return f"missed target (achieved {achieved:.4g})"


def warning_line(entry: str, result: dict | None) -> str | None:
    """The line ``sparsebench run`` prints at its end for a finished run that missed its target
    (None otherwise): which run, what it achieved, and that it is not ranked."""
    if not result or result.get("status") != "ok":
        return None
    config = result.get("config") or {}
    target = float((config.get("sparsity") or {}).get("target") or 0.0)
    achieved = (result.get("counts") or {}).get("sparsity")
    if (config.get("method") or {}).get("name") == "dense" or achieved is None \
            or not missed_target(target, float(achieved)):
        return None
    calibration = ("; its calibration did not converge"
                   if result.get("calibration_converged") is False else "")
    return (f"warning: {entry} s={target:g} seed={config.get('seed')} missed its target: "
            f"achieved sparsity {float(achieved):.4f}, outside density {1 - target:.4g} ± "
            f"{TARGET_REL_TOL:.0%}{calibration}; not ranked in the {target:.0%} section")
