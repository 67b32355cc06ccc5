"""The training loop's parts: ``train_step`` calls the hooks in the contract's order with the
dense gradient visible in ``after_backward``, and ``TrainState`` keeps the checkpoint format
(so checkpoints written before it still resume)."""

from __future__ import annotations

import torch

from bench.train import TrainState, train_step
from methods.static import Static
from tests import hook_driver


class Recording(Static):
    """Static sparse training that logs its hooks and keeps the gradient after_backward saw."""

    def __init__(self, config, hparams):
        super().__init__(config, hparams)
        self.calls: list[tuple[str, int | None]] = []
        self.seen: dict[str, torch.Tensor] = {}

    def extra_loss(self, model):
        self.calls.append(("extra_loss", None))
        return None

    def after_backward(self, model, step):
        self.calls.append(("after_backward", step))
        # The dense-gradient rule: read before masking (methods/base.py).
        self.seen = {n: w.grad.clone() for n, w in self.masking.weights().items()}
        super().after_backward(model, step)

    def after_step(self, model, optimizer, step):
        self.calls.append(("after_step", step))
        super().after_step(model, optimizer, step)


def test_train_step_calls_the_hooks_in_order_with_the_dense_gradient_first():
    cfg = hook_driver.config("static", sparsity=0.8)
    model, masking, _, opt = hook_driver.build(cfg)
    method = Recording(cfg, cfg.method.hparams)
    method.setup(hook_driver.SetupContext(
        model=model, masking=masking, config=cfg, loss_fn=torch.nn.functional.cross_entropy,
        batches=lambda: iter(()), steps_per_epoch=hook_driver.SPE,
        device=torch.device("cpu"), generator=method.generator))
    x, y = hook_driver.X[:hook_driver.BATCH], hook_driver.Y[:hook_driver.BATCH]
    for step in (1, 2):
        loss = train_step(model, method, opt, x, y, step)
    assert method.calls == [("extra_loss", None), ("after_backward", 1), ("after_step", 1),
                            ("extra_loss", None), ("after_backward", 2), ("after_step", 2)]
    assert loss.shape == () and not loss.requires_grad
    for name, w in masking.weights().items():
        pruned = ~masking.masks[name]
        assert pruned.sum() > 0
        # after_backward saw gradients on pruned positions; the optimizer did not.
        assert torch.count_nonzero(method.seen[name][pruned]) > 0, name
        assert torch.count_nonzero(w.grad[pruned]) == 0, name
        assert torch.count_nonzero(w.detach()[pruned]) == 0, name


def test_train_state_keeps_the_checkpoint_keys_and_reads_older_checkpoints():
    state = TrainState(model={"w": torch.ones(2)}, optimizer={"state": {}}, method={"k": 1},
                       phase=1, epoch=3, batch=7, step=57, history=[{"epoch": 1}],
                       train_flops=1.5e9, wall_time=12.0, loss_sum=4.25, n_batches=7)
    payload = state.to_payload()
    # The keys checkpoints have always had (bench.checkpoint.save adds "rng").
    assert set(payload) == {"model", "optimizer", "method", "phase", "epoch", "batch", "step",
                            "history", "train_flops", "wall_time", "loss_sum", "n_batches"}
    rng = {"torch": torch.get_rng_state()}
    assert TrainState.from_payload({**payload, "rng": rng}) == TrainState(
        **{**vars(state), "rng": rng})
    fp16 = TrainState(**{**vars(state), "scaler": {"scale": 1024.0}}).to_payload()
    assert fp16["scaler"] == {"scale": 1024.0}
    # Checkpoints from before mid-epoch losses were kept have neither loss_sum nor n_batches.
    older = {k: v for k, v in payload.items() if k not in ("loss_sum", "n_batches")}
    loaded = TrainState.from_payload({**older, "rng": rng})
    assert (loaded.loss_sum, loaded.n_batches, loaded.step) == (0.0, 0, 57)
