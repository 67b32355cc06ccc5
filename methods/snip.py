"""SNIP: single-shot network pruning by connection sensitivity (Lee, Ajanthan & Torr, ICLR 2019).

Rule, as in namhoonlee/snip-public ``snip/model.py`` (``get_sparse_mask``, ``create_sparse_mask``)
and ``snip/prune.py``:

1. Put a multiplicative mask c = 1 on every prunable weight.
2. On one mini-batch of training data, g = dL(c * w)/dc = w * dL/dw.
3. Score |g| (the reference divides by sum |g|, which does not change the ranking).
4. Keep the global top-k over all prunable weights, k = int(round(N (1 - s))) as
   ``create_sparse_mask`` counts it (Python's round: 86 of 864 at s = 0.9, where
   N - floor(s N) would keep 87); no per-layer constraint, so first and last layers compete
   with the rest.

Details kept from the reference code:

* The scoring forward runs in inference mode (``is_train=False``: BatchNorm uses its initial
  moving statistics).
* The mask is computed on a separately, independently initialised copy of the weights
  (``weights_bp``) and applied to the trainable weights (``weights_ap``); ``independent_init``
  reproduces that with the model's own initialisers, drawing from the method's generator.
* Batch size 100 (the reference's ``--batch_size`` default).

Deviations, on purpose: the reference also prunes biases; the harness never does (its layer
policy, ``reference/methods.md`` §0). ``num_batches > 1`` averages dL/dc over several batches
before taking |.| (an option; the paper uses one). ``distribution = uniform | erk`` keeps the top-k
per layer at the usual per-layer densities instead, which is RigL's SNIP
(google-research/rigl ``rigl/sparse_optimizers.py``, ``SparseSnipOptimizer``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from bench.config import check
from methods.base import Batch, MaskedMethod, SetupContext
from methods.examples import passes
from methods.masking import Masking, kept_count, layer_densities
from methods.selection import top_k


@dataclass(frozen=True)
class SNIPHparams:
    batch_size: int = field(default=100, metadata=check(ge=1))
    num_batches: int = field(default=1, metadata=check(ge=1))
    independent_init: bool = True


def take_examples(batches: Callable[[], Iterator[Batch]], n: int) -> Batch:
    """The first `n` training examples in the setup order (cycling if the data is smaller)."""
    xs, ys = [], []
    for (_, _, x, y), _ in zip(passes(batches), range(n), strict=False):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def reinitialised_copy(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """A deep copy of `model` with every submodule's own ``reset_parameters`` redrawn under a
    seed taken from `generator`; the caller's global RNG state is left untouched."""
    clone = copy.deepcopy(model)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    devices = sorted({p.device.index or 0 for p in clone.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for module in clone.modules():
            reset = getattr(module, "reset_parameters", None)
            if module is not clone and callable(reset):
                reset()
    return clone


def snip_scores(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: list[Batch],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """|dL/dc| at c = 1 for every weight of `layers`: |w * mean over batches of dL/dw|."""
    weights = [module.weight for module in layers.values()]
    grads = [torch.zeros_like(w) for w in weights]
    for x, y in batches:
        loss = loss_fn(model(x), y)
        for acc, g in zip(grads, torch.autograd.grad(loss, weights), strict=True):
            acc.add_(g)
    return {
        name: (w.detach() * g / len(batches)).abs()
        for name, w, g in zip(layers, weights, grads, strict=True)
    }


def snip_kept_count(numel: int, density: float) -> int:
    """``create_sparse_mask``'s kappa: int(round(numel * (1 - target_sparsity)))."""
    return int(round(numel * density))


def keep_top_scores(masking: Masking, scores: dict[str, torch.Tensor], density: float,
                    distribution: str) -> None:
    """Masks from scores: global top-k for ``learned`` (snip-public's count,
    ``snip_kept_count``), per-layer top-k with RigL's ``kept_count`` otherwise."""
    if distribution == "learned":
        masking.init_from_scores(scores, snip_kept_count(masking.total(), density))
        return
    densities = layer_densities(masking.shapes(), density, distribution)
    for name, score in scores.items():
        masking.set_mask(name, top_k(score, kept_count(score.numel(), densities[name])))
    masking.apply()


class SNIP(MaskedMethod):
    name = "snip"
    Hparams = SNIPHparams
    default_distribution = "learned"
    distributions = ("learned", "uniform", "erk")

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        if ctx.resuming:
            return  # the masks are model buffers: the checkpoint restores them
        hp = self.hparams
        scorer = (reinitialised_copy(ctx.model, self.generator) if hp.independent_init
                  else ctx.model)
        was_training = scorer.training
        scorer.eval()
        modules = dict(scorer.named_modules())
        layers = {name: modules[name] for name in ctx.masking.layers}
        x, y = take_examples(ctx.batches, hp.batch_size * hp.num_batches)
        batches = list(zip(x.split(hp.batch_size), y.split(hp.batch_size), strict=True))
        scores = snip_scores(scorer, layers, batches, ctx.loss_fn)
        scorer.train(was_training)
        keep_top_scores(ctx.masking, scores, self.density, self.distribution)

    def promised_nonzero(self, model: nn.Module, masking: Masking) -> int | None:
        """``keep_top_scores``' budget: the global top-k for ``learned``, else per layer."""
        if self.distribution != "learned":
            return super().promised_nonzero(model, masking)
        params = sum(p.numel() for p in model.parameters())
        return params - masking.total() + snip_kept_count(masking.total(), self.density)
