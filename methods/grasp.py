"""GraSP: gradient signal preservation (Wang, Zhang & Grosse, ICLR 2020).

Rule, as in alecwangcq/GraSP ``pruner/GraSP.py`` (``GraSP``, ``GraSP_fetch_data``):

0. Re-initialise the network as ``main_prune_non_imagenet.py`` does before pruning
   (``mb.model.apply(weights_init)``, ``models/base/init_utils.py``): every conv Kaiming-normal
   with fan-out and the ReLU gain, Linear weights N(0, 0.01), conv and Linear biases 0,
   BatchNorm weight 1 and bias 0. This is the network that is trained (``reference_init``;
   drawn from the method's generator, applied to Conv1d/2d/3d alike).
1. Score a deep copy of the network, in train mode, whose Linear weights are redrawn with
   Xavier-normal (``reinit=True``); this affects only the scoring copy.
2. Fetch exactly ``samples_per_class`` training examples of every class, concatenated class by
   class, and split the batch into two halves (``num_iters`` fetches give 2 * num_iters halves).
3. g = sum over halves of grad_theta L(f(x) / T) with temperature T = 200 on the logits.
4. Hg = sum over halves of grad_theta (g . grad_theta L(f(x) / T)), a Hessian-gradient product
   by double back-propagation (``create_graph=True``).
5. Score S = -theta * Hg per weight. theta and g range over every Conv/Linear weight (no biases,
   no BatchNorm), as in the reference; only the prunable layers are scored.
6. Remove the weights with the *largest* scores, globally: removing a weight with a large S
   increases (or least reduces) the gradient norm to first order, since
   d/de |grad L(theta - e theta_j)|^2 = -2 theta_j (Hg)_j = 2 S_j. Exactly as the reference
   counts: scores are divided by |sum S| + 1e-10, the threshold is the k-th largest normalised
   score with k = int(N (1 - keep_ratio)), keep_ratio = 1 - s, and the weights with a score
   <= threshold are kept. So N - k + 1 weights survive when scores are distinct (433 of 864 at
   s = 0.5, where N - floor(s N) would keep 432); ties at the threshold all survive.

``samples_per_class = 10`` is the reference configs' value for CIFAR-10 (VGG19 and ResNet32) and
CIFAR-100 VGG19; the configs use 5 for CIFAR-100 ResNet32 and 1 (with ``num_iters`` 10 / 150)
for Tiny-ImageNet / ImageNet. The ganguli-lab/Synaptic-Flow re-implementation
(``Pruners/pruners.py``, ``GraSP``) keeps the top of theta * Hg, the same thing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from bench.config import check
from bench.models.inits import grasp_init
from methods.base import Batch, MaskedMethod, SetupContext
from methods.examples import Example, passes
from methods.masking import PRUNABLE_TYPES, Masking
from methods.selection import kth_largest

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class GraSPHparams:
    samples_per_class: int = field(default=10, metadata=check(ge=1))
    num_iters: int = field(default=1, metadata=check(ge=1))
    temperature: float = field(default=200.0, metadata=check(gt=0))
    reinit_linear: bool = True
    reference_init: bool = True


def fetch_per_class(stream: Iterator[Example], num_classes: int,
                    samples_per_class: int) -> Batch:
    """``GraSP_fetch_data``: the next `samples_per_class` examples of every class from `stream`,
    concatenated class by class (so the two halves hold different classes, as in the
    reference). Never takes an example twice: fails when the stream comes back to where this
    fetch started."""
    xs: list[list[torch.Tensor]] = [[] for _ in range(num_classes)]
    ys: list[list[torch.Tensor]] = [[] for _ in range(num_classes)]
    missing = num_classes
    start = None
    for pass_no, index, x, y in stream:
        if start is None:
            start = (pass_no, index)
        elif (pass_no, index) >= (start[0] + 1, start[1]):
            short = [c for c in range(num_classes) if len(xs[c]) < samples_per_class]
            raise ValueError(f"GraSP needs {samples_per_class} examples of every class; the "
                             f"training data has fewer for classes {short}")
        c = int(y)
        if len(xs[c]) < samples_per_class:
            xs[c].append(x)
            ys[c].append(y)
            missing -= len(xs[c]) == samples_per_class
            if missing == 0:
                break
    return torch.cat([torch.cat(v) for v in xs]), torch.cat([torch.cat(v) for v in ys])


def gradient_and_hessian_gradient(
    model: nn.Module, weights: list[torch.Tensor], halves: list[Batch], loss_fn: LossFn,
    temperature: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """g = sum_h grad L_h and Hg = sum_h H_h g, with L_h = loss(f(x_h) / T, y_h)."""
    g = [torch.zeros_like(w) for w in weights]
    for x, y in halves:
        grads = torch.autograd.grad(loss_fn(model(x) / temperature, y), weights)
        for acc, gi in zip(g, grads, strict=True):
            acc.add_(gi)
    hg = [torch.zeros_like(w) for w in weights]
    for x, y in halves:
        grads = torch.autograd.grad(loss_fn(model(x) / temperature, y), weights,
                                    create_graph=True)
        z = sum((gi.detach() * gf).sum() for gi, gf in zip(g, grads, strict=True))
        for acc, h in zip(hg, torch.autograd.grad(z, weights), strict=True):
            acc.add_(h)
    return g, hg


def grasp_scores(model: nn.Module, prunable: list[str], halves: list[Batch], loss_fn: LossFn,
                 temperature: float) -> dict[str, torch.Tensor]:
    """-theta * Hg for the weights of the `prunable` modules of `model`."""
    convlin = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    names = list(convlin)
    weights = [convlin[n].weight for n in names]
    _, hg = gradient_and_hessian_gradient(model, weights, halves, loss_fn, temperature)
    by_name = dict(zip(names, hg, strict=True))
    return {n: -(convlin[n].weight.detach() * by_name[n]) for n in prunable}


@torch.no_grad()
def reference_init(model: nn.Module, generator: torch.Generator) -> None:
    """``weights_init`` of the reference (step 0; ``bench.models.inits.grasp_init``), drawn
    under a seed taken from `generator`; the caller's global RNG state is left untouched."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model.apply(grasp_init)


def keep_at_most_threshold(masking: Masking, scores: dict[str, torch.Tensor],
                           target: float) -> None:
    """The reference's pruning rule (step 6) over the masking's layers, in layer order."""
    flat = torch.cat([scores[n].flatten() for n in masking.layers])
    flat = flat / (flat.sum().abs() + 1e-10)
    n_remove = int(flat.numel() * (1 - (1 - target)))
    keep = torch.ones_like(flat, dtype=torch.bool) if n_remove == 0 else \
        flat <= kth_largest(flat, n_remove)
    masking.set_flat_mask(keep)


class GraSP(MaskedMethod):
    name = "grasp"
    Hparams = GraSPHparams
    default_distribution = "learned"
    distributions = ("learned",)

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        if ctx.resuming:
            return  # the masks are model buffers: the checkpoint restores them
        hp = self.hparams
        if hp.reference_init:
            reference_init(ctx.model, self.generator)
        scorer = copy.deepcopy(ctx.model).train()
        if hp.reinit_linear:
            for module in scorer.modules():
                if isinstance(module, nn.Linear):
                    fresh = torch.empty(module.weight.shape)
                    nn.init.xavier_normal_(fresh, generator=self.generator)
                    with torch.no_grad():
                        module.weight.copy_(fresh)
        stream = passes(ctx.batches)
        probe_x, _ = next(iter(ctx.batches()))
        with torch.no_grad():
            num_classes = scorer.eval()(probe_x[:1]).shape[1]
        scorer.train()
        halves: list[Batch] = []
        for _ in range(hp.num_iters):
            x, y = fetch_per_class(stream, num_classes, hp.samples_per_class)
            half = len(y) // 2
            halves += [(x[:half], y[:half]), (x[half:], y[half:])]
        scores = grasp_scores(scorer, list(ctx.masking.layers), halves, ctx.loss_fn,
                              hp.temperature)
        keep_at_most_threshold(ctx.masking, scores, self.target)

    def promised_nonzero(self, model: nn.Module, masking) -> int | None:
        """None: the reference keeps every weight whose score ties the threshold
        (``keep_at_most_threshold``), so the count depends on the scores, not on the target
        alone."""
        return None
