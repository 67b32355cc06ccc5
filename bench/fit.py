"""Whether a run's model takes its dataset's examples, checked before anything starts.

A model built for images given MNIST-1D's 40-point vectors (or a 1-D network given images)
fails on its first batch; without this check each such run would start, fail as a training
failure and wait for ``--retry-failed``. The model is built on PyTorch's ``meta`` device
(shapes only: no memory, no computation, no random numbers drawn) and given a batch of two
examples of the dataset's shape (``bench.preflight.data_shape``: the shapes of the real
datasets, known without loading them).
"""

from __future__ import annotations

import torch

from bench.config import RunConfig
from bench.errors import UserError
from bench.models import build_model


def check_model_fits(config: RunConfig) -> None:
    """UserError when `config`'s model cannot take a batch of its dataset's examples (at
    the run's width). Silent for a dataset whose shape is known only once loaded (another
    package's) and for a model whose forward the meta device cannot trace."""
    from bench.preflight import data_shape

    try:
        shape = data_shape(config)
    except KeyError:
        return
    name = config.model.name
    try:
        with torch.device("meta"):
            model = build_model(name, shape.num_classes, shape.input_shape, config.model.width)
            model.eval()  # batch norm in training mode wants more than one value per channel
            with torch.no_grad():
                model(torch.empty((2, *shape.input_shape)))
    except UserError:
        raise
    except NotImplementedError:
        return  # an operator without a meta kernel: nothing to learn here
    except Exception as exc:  # noqa: BLE001 - any error of the forward is the mismatch
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "meta" in reason.lower():
            return  # the meta device itself, not the shapes
        raise UserError(f"model {name} does not take {config.data.name}'s examples (shape "
                        f"{tuple(shape.input_shape)}): {reason}") from None
