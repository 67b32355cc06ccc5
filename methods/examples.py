"""Setup-time data for methods that score weights on examples (SNIP, GraSP): the training
examples one at a time, in the setup order, re-iterating the data endlessly (as the references'
endlessly re-iterated data loaders do: snip-public ``snip/datasets.py``, GraSP's
``GraSP_fetch_data`` over ``iter(train_loader)``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from methods.base import Batch

# (pass number, index in the pass, x of shape [1, ...], y of shape [1])
Example = tuple[int, int, torch.Tensor, torch.Tensor]


def passes(batches: Callable[[], Iterator[Batch]]) -> Iterator[Example]:
    """(pass number, index in the pass, x, y) for every example, one at a time, re-iterating
    `batches()` endlessly. Raises ValueError when a pass yields no example."""
    pass_no = 0
    while True:
        index = 0
        for x, y in batches():
            for i in range(len(y)):
                yield pass_no, index, x[i : i + 1], y[i : i + 1]
                index += 1
        if index == 0:
            raise ValueError("the training data is empty")
        pass_no += 1
