"""Post-training verification of a fixed budget (issue 11).

A method with ``fixed_budget`` promises an exact nonzero parameter count for its model and target
(``Method.promised_nonzero``, computed by the same rule that builds its masks). A run that ends
with another count (a GMP schedule that never reaches its end step, a mask update that went
wrong) did not measure the experiment its row names, so ``bench.run`` records it as failed with
the reason instead of ``ok``; its counts and accuracy stay in ``result.json`` for diagnosis.
"""

from __future__ import annotations

from torch import nn

from bench.flops import ModelCounts


def budget_error(method, model: nn.Module, counts: ModelCounts) -> str | None:
    """The failure reason when a fixed-budget method's final nonzero count differs from its own
    promise, else None (also None for methods whose training decides the count)."""
    if not method.fixed_budget or method.masking is None:
        return None
    promised = method.promised_nonzero(model, method.masking)
    if promised is None or promised == counts.params_nonzero:
        return None
    return (f"{method.name} has a fixed budget: at target {method.target:g} it promises exactly "
            f"{promised} nonzero parameters, the final model has {counts.params_nonzero} "
            f"(achieved sparsity {counts.sparsity:.4f}); the run did not reach its budget")


def calibration_flag(summary: dict) -> dict:
    """``{"calibration_converged": bool}`` for a method whose summary records a calibration
    (STR's weight-decay search, ``methods.calibration``), else ``{}`` so other results keep
    their keys. A calibration that ran out of runs before reaching its tolerance is said in the
    report next to the run's achieved sparsity."""
    calibration = summary.get("calibration") if isinstance(summary, dict) else None
    if isinstance(calibration, dict) and "converged" in calibration:
        return {"calibration_converged": bool(calibration["converged"])}
    return {}
