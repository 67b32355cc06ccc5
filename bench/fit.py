"""Whether a run fits its dataset, checked before anything starts: its model takes the
dataset's examples, and its ``train_subset`` is not larger than the training set.

A model built for images given MNIST-1D's 40-point vectors (or a 1-D network given images)
fails on its first batch; without this check each such run would start, fail as a training
failure and wait for ``--retry-failed``. The model is built on PyTorch's ``meta`` device
(shapes only: no memory, no computation, no random numbers drawn) and given a batch of two
examples of the dataset's shape (``bench.preflight.data_shape``: the shapes of the real
datasets, known without loading them).
"""

from __future__ import annotations

from dataclasses import replace

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


def check_subset(config: RunConfig) -> None:
    """UserError when ``data.train_subset`` asks for more examples than the training set has
    (the loaders take the whole set then, under another run id than the whole set's own)."""
    from bench.preflight import data_shape

    d = config.data
    # The synthetic set is generated at the size train_subset asks for (bench/data/synthetic.py).
    if not d.train_subset or d.name == "synthetic":
        return
    try:
        full = data_shape(replace(config, data=replace(d, train_subset=0))).train_size
    except KeyError:
        return
    if d.train_subset > full:
        raise UserError(f"data.train_subset = {d.train_subset}: {d.name} has {full} training "
                        f"examples; use at most {full} (0, the default, means all of them)")
