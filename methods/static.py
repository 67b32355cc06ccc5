"""Static sparse training: a random mask drawn once at initialisation and never changed.

Follows RigL's ``training_method='scratch'`` baseline (google-research/rigl,
``rigl/sparse_utils.py``: ``get_mask_random_numpy`` drops exactly floor(s * n) weights per layer
at uniformly random positions; ``get_sparsities_erdos_renyi`` for ERK), which is also the DSR
repo's static baseline (IntelAI/dynamic-reparameterization ``parameterized_tensors.py``) up to its
``int((1 - s) * n + 0.1)`` rounding. Weights keep the standard dense initialiser
(RigL ``init_method='baseline'``); masked weights are zeroed after init and after every step.
"""

from __future__ import annotations

from methods.base import MaskedMethod, SetupContext


class Static(MaskedMethod):
    name = "static"

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        ctx.masking.init_random(self.density, self.distribution, self.generator)
