"""Thin dense: the same architecture with narrower layers, trained dense, sized to have as many
parameters as the sparse networks it is compared with (DSR baseline, Mostafa & Wang 2019, §4:
"original model with less wide layers, such that it had (1-s)N parameters").

Reference: IntelAI/dynamic-reparameterization trains the dense model at a smaller
``--widen-factor`` (``experiments/wrnet_experiments.yaml``, ``experiments/resnet_experiments.yaml``)
with no mask. Its hand-picked factors give 7-30% more parameters than the sparse nets they are
compared with (``reference/methods.md`` §1), so the size is *solved*, never tabulated. The goal:

    sparse nonzeros = every parameter of the model at the run's width
                      - prunable weights (under the run's layer policy)
                      + sum over prunable layers of kept_count(numel, 1 - target)

and the thin model's parameter count (all parameters: weights, biases, norm layers) must be
within 1% of it.

The rule, in order:

1. One width multiplier for every layer, as DSR does: bisection over w in (0, run width] finds
   the step of the count that crosses the goal; the nearer of the two steps either side wins,
   reported as the shortest decimal width that builds the same channels. If that count is within
   1% of the goal, this is the answer.
2. Channel counts are integers, so on small models one multiplier moves the count in steps wider
   than the 2% window (the MNIST-1D CNN at 98%: 150 or 238 parameters for a goal of 189). Then
   each independent width group (``bench.models``: layers that residual sums force to be equal)
   gets its own count c_g in 1..C_g (C_g = the group's channels at the run's width), and among
   the vectors within 1% of the goal the one closest to a uniform thinning wins: smallest spread
   max(c_g / C_g) / min(c_g / C_g), then smallest |count - goal|, then the smaller count (never
   above budget on a tie), then the lexicographically smallest vector.
3. If no vector is within 1% (a single-group model such as the MNIST-1D MLP, whose every width
   is already a uniform one), step 1's nearest uniform width stands; ``relative_gap`` shows it.

Counting: the parameter count is a polynomial of degree <= 2 in the group channel counts (every
layer is bilinear in its in/out channels, plus linear bias and norm terms), so its coefficients
come exactly from 1 + 2G + G(G-1)/2 models built on the ``meta`` device (no memory, no RNG draws)
at tiny widths; candidates are then evaluated arithmetically. The fit is checked against a real
count at the run's width, and the chosen vector is built on ``meta`` and counted before use.
``summary()`` records the solved channels per group, the width when the solution is uniform
(``None`` otherwise), the spread, both counts and their relative gap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.errors import UserError
from bench.models import Channels, ModelMaker
from methods.base import Method
from methods.masking import kept_count, prunable_layers

BISECTION_STEPS = 60
# Within 1%: |count - goal| * TOLERANCE_DIVISOR <= goal.
TOLERANCE_DIVISOR = 100
# Box enumeration evaluates at most this many vectors at once.
CHUNK = 1 << 20


def shape_only(build: Callable[[], nn.Module]) -> nn.Module:
    """The model `build` returns, for counting only: on the meta device when the builder allows
    it, otherwise built for real without touching the caller's RNG."""
    try:
        with torch.device("meta"):
            return build()
    except (RuntimeError, NotImplementedError):
        with torch.random.fork_rng(devices=[]):
            return build()


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_channels(make_model: ModelMaker, channels: Sequence[int]) -> int:
    """The real parameter count of the model at explicit `channels` (a meta build)."""
    return num_params(shape_only(lambda: make_model.with_channels(channels)))


def count_params(make_model: ModelMaker, width: float) -> int:
    """The real parameter count of the model at width multiplier `width` (a meta build)."""
    return num_params(shape_only(lambda: make_model(width)))


def sparse_nonzeros(model: nn.Module, layer_policy: str, target: float) -> int:
    """Nonzero parameters of `model` sparsified to `target` with uniform per-layer counts."""
    total = num_params(model)
    for module in prunable_layers(model, layer_policy).values():
        n = module.weight.numel()
        total -= n - kept_count(n, 1.0 - target)
    return total


@dataclass(frozen=True)
class ParamPolynomial:
    """Twice the parameter count as an integer polynomial in x = channels - 1:
    2P = k + sum_g a_g x_g + sum_{g<=h} b_gh x_g x_h (doubled so every coefficient is an
    integer even when a squared term's coefficient is a half-integer)."""

    k: int
    a: tuple[int, ...]
    b: tuple[tuple[int, ...], ...]  # upper triangle, b[g][h] for h >= g

    @classmethod
    def fit(cls, count: Callable[[Channels], int], groups: int) -> ParamPolynomial:
        """Exact coefficients from counts at all-ones, ones + e_g, ones + 2e_g, ones + e_g + e_h."""

        def at(*bumps: int) -> int:
            c = [1] * groups
            for g in bumps:
                c[g] += 1
            return count(tuple(c))

        p0 = at()
        p1 = [at(g) for g in range(groups)]
        p2 = [at(g, g) for g in range(groups)]
        # P(e_g) = p0 + a + s and P(2e_g) = p0 + 2a + 4s (s = squared coefficient).
        b2 = [p2[g] - 2 * p1[g] + p0 for g in range(groups)]  # 2s
        a2 = [2 * (p1[g] - p0) - b2[g] for g in range(groups)]  # 2a
        b = [[0] * groups for _ in range(groups)]
        for g in range(groups):
            b[g][g] = b2[g]
            for h in range(g + 1, groups):
                b[g][h] = 2 * (at(g, h) - p1[g] - p1[h] + p0)
        return cls(2 * p0, tuple(a2), tuple(tuple(row) for row in b))

    def __call__(self, channels: Sequence[Any]) -> Any:
        """The count at `channels` (ints, or broadcastable int64 arrays of equal shapes)."""
        x = [c - 1 for c in channels]
        twice = self.k
        for g, xg in enumerate(x):
            twice = twice + self.a[g] * xg
            for h in range(g, len(x)):
                if self.b[g][h]:
                    twice = twice + self.b[g][h] * xg * x[h]
        return twice // 2


@dataclass(frozen=True)
class Solution:
    channels: Channels
    params: int
    width: float | None  # the multiplier when the channels are a uniform thinning's, else None
    spread: Fraction


def within_tolerance(params: int, goal: int) -> bool:
    return abs(params - goal) * TOLERANCE_DIVISOR <= goal


def spread(channels: Sequence[int], top: Sequence[int]) -> Fraction:
    ratios = [Fraction(c, t) for c, t in zip(channels, top, strict=True)]
    return max(ratios) / min(ratios)


def solve_uniform(make_model: ModelMaker, poly: ParamPolynomial, base_width: float,
                  goal: int) -> tuple[float, Channels, int]:
    """The width in (0, base_width] whose count is nearest `goal` (the larger width on a tie),
    as the shortest decimal that builds the same channels."""
    spec = make_model.spec

    def count(width: float) -> int:
        return poly(spec.channels(width))

    top = count(base_width)
    if top <= goal:
        return base_width, spec.channels(base_width), top
    lo, hi = 0.0, base_width  # invariant: count(lo) < goal <= count(hi) (count(0+) is minimal)
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if count(mid) >= goal:
            hi = mid
        else:
            lo = mid
    candidates = [(hi, count(hi))]
    if lo > 0:
        candidates.append((lo, count(lo)))
    width, params = min(candidates, key=lambda c: (abs(c[1] - goal), -c[0]))
    channels = spec.channels(width)
    # A short width that builds the same channels reads better in tables than 0.38271094...
    for digits in range(2, 9):
        short = round(width, digits)
        if short > 0 and spec.channels(short) == channels:
            return short, channels, params
    return width, channels, params


def _next_ratio(ratio: Fraction, top: Channels, skip: int) -> Fraction | None:
    """The smallest c_h / top_h above `ratio` over groups h != skip (None past the last)."""
    best = None
    for h, t in enumerate(top):
        if h == skip:
            continue
        k = ratio.numerator * t // ratio.denominator + 1
        if k <= t and (best is None or Fraction(k, t) < best):
            best = Fraction(k, t)
    return best


def _floor_at(ratio: Fraction, top: Channels, anchor: int, value: int) -> Channels:
    return tuple(value if h == anchor else ratio.numerator * t // ratio.denominator
                 for h, t in enumerate(top))


def _box(lower: Channels, upper: Channels) -> Iterator[list[np.ndarray]]:
    """Every vector with lower <= c <= upper, as flat int64 columns, in chunks."""
    rest = [np.arange(lo, up + 1, dtype=np.int64) for lo, up in zip(lower[1:], upper[1:],
                                                                    strict=True)]
    grids = [g.ravel() for g in np.meshgrid(*rest, indexing="ij")] if rest else []
    n = grids[0].size if grids else 1
    per_first = max(1, CHUNK // n)
    for start in range(lower[0], upper[0] + 1, per_first):
        firsts = np.arange(start, min(upper[0], start + per_first - 1) + 1, dtype=np.int64)
        yield [np.repeat(firsts, n)] + [np.tile(g, firsts.size) for g in grids]


def _best_in_box(poly: ParamPolynomial, goal: int, lower: Channels,
                 upper: Channels) -> tuple[int, int, Channels] | None:
    """(|count - goal|, count, channels) of the best vector in the box within 1% of `goal`:
    nearest count, then smaller count, then lexicographically smallest; None if there is none."""
    best = None
    for columns in _box(lower, upper):
        params = poly(columns)
        gap = np.abs(params - goal)
        inside = np.flatnonzero(gap * TOLERANCE_DIVISOR <= goal)
        if inside.size == 0:
            continue
        # lexsort: the last key is the primary one.
        keys = [columns[g][inside] for g in reversed(range(len(columns)))]
        i = inside[np.lexsort(keys + [params[inside], gap[inside]])[0]]
        found = (int(gap[i]), int(params[i]), tuple(int(c[i]) for c in columns))
        if best is None or found < best:
            best = found
    return best


def solve_groups(poly: ParamPolynomial, top: Channels, goal: int,
                 start: Fraction) -> Solution | None:
    """The vector 1 <= c <= top within 1% of `goal` closest to a uniform thinning (see the
    module docstring), or None if no vector is within 1%.

    Every vector has a group g0 at the smallest ratio m = c_g0 / top_g0 ("anchor"); for an
    anchor the other groups sit in [ceil(m top_h), floor(R top_h)] for the vector's largest
    ratio R. The count grows with every channel, so for each anchor R rises through the
    possible ratios until the box's largest count reaches the window; the in-window vectors of
    that first box all have largest ratio exactly R (a smaller R's box held none), so the
    anchor's spread is R / m. Anchors are tried nearest the uniform solution's ratio `start`
    first, and a spread no better than the best so far ends an anchor early.
    """
    window_lo = goal - goal // TOLERANCE_DIVISOR
    window_hi = goal + goal // TOLERANCE_DIVISOR
    best: tuple[Fraction, int, int, Channels] | None = None
    anchors = sorted(((g, a) for g, t in enumerate(top) for a in range(1, t + 1)),
                     key=lambda ga: (abs(Fraction(ga[1], top[ga[0]]) - start), ga))
    for g0, a in anchors:
        m = Fraction(a, top[g0])
        lower = tuple(a if h == g0 else -(-a * t // top[g0]) for h, t in enumerate(top))
        if poly(lower) > window_hi:
            continue  # even the smallest vector of this anchor is above the window
        ratio = max(Fraction(c, t) for c, t in zip(lower, top, strict=True))
        limit = min(Fraction(1), best[0] * m) if best else Fraction(1)
        if ratio > limit or poly(_floor_at(limit, top, g0, a)) < window_lo:
            continue  # the window is out of reach without a worse spread than the best
        current: Fraction | None = ratio
        while current is not None and current <= limit:
            upper = _floor_at(current, top, g0, a)
            if poly(upper) >= window_lo:
                found = _best_in_box(poly, goal, lower, upper)
                if found is not None:
                    key = (current / m, *found)
                    if best is None or key < best:
                        best = key
                    break
            current = _next_ratio(current, top, g0)
    if best is None:
        return None
    return Solution(channels=best[3], params=best[2], width=None, spread=best[0])


def solve(make_model: ModelMaker, base_width: float, goal: int) -> Solution:
    """Thin-dense channels for a parameter budget of `goal` (rules in the module docstring)."""
    spec = make_model.spec
    top = spec.channels(base_width)
    poly = ParamPolynomial.fit(lambda c: count_channels(make_model, c), len(top))
    if poly(top) != count_channels(make_model, top):
        raise RuntimeError(f"the parameter count of {spec.name} is not quadratic in its width "
                           f"groups; thin dense cannot solve it arithmetically")
    width, channels, params = solve_uniform(make_model, poly, base_width, goal)
    solution = Solution(channels, params, width, spread(channels, top))
    if not within_tolerance(params, goal) and len(top) > 1:
        start = Fraction(width / base_width) if width < base_width else Fraction(1)
        solution = solve_groups(poly, top, goal, start) or solution
    real = count_channels(make_model, solution.channels)
    if real != solution.params:
        raise RuntimeError(f"{spec.name} at {solution.channels}: {real} parameters, the fitted "
                           f"count says {solution.params}")
    return solution


class ThinDense(Method):
    name = "thin_dense"
    default_distribution = "uniform"
    distributions = ("uniform",)
    # The target decides the width; training itself uses no masks.
    uses_sparsity = True
    # Only models with width groups (bench.models) can be thinned; a grid checks it up front.
    needs_width = True

    def __init__(self, config, hparams):
        super().__init__(config, hparams)
        self.solved: dict[str, Any] = {}

    def build_model(self, make_model: ModelMaker, target: float) -> nn.Module:
        if not make_model.spec.has_width:
            raise UserError(f"thin dense needs a model with width groups; "
                            f"{make_model.name} has none: {make_model.spec.no_width_reason}")
        base = self.config.model.width
        reference = shape_only(lambda: make_model(base))
        target_params = sparse_nonzeros(reference, self.config.sparsity.layer_policy, target)
        solution = solve(make_model, base, target_params)
        names = make_model.spec.group_names
        self.solved = {
            "channels": dict(zip(names, solution.channels, strict=True)),
            "width": solution.width,
            "spread": float(solution.spread),
            "params": solution.params,
            "target_params": target_params,
            "relative_gap": (solution.params - target_params) / target_params,
            "base_width": base,
            "base_channels": dict(zip(names, make_model.spec.channels(base), strict=True)),
            "base_params": num_params(reference),
        }
        if solution.width is not None:
            return make_model(solution.width)
        return make_model.with_channels(solution.channels)

    def promised_nonzero(self, model: nn.Module, masking) -> int | None:
        """The solver's parameter count of the thin model it built (within 1% of the sparse
        budget by construction; trained dense, so every parameter counts)."""
        return int(self.solved["params"])

    def summary(self) -> dict[str, Any]:
        return dict(self.solved)
