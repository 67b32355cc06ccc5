"""RigL's mask update against values worked out by hand from rigl's ``_get_update_op``."""

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import MethodConfig, RunConfig, SparsityConfig, TrainConfig
from methods.base import SetupContext
from methods.masking import Masking
from methods.rigl import RigL, RigLHparams


def tiny_rigl(hparams, epochs=1, steps_per_epoch=100):
    layer = nn.Linear(4, 3, bias=False)
    config = RunConfig(method=MethodConfig("rigl", hparams),
                       train=TrainConfig(epochs=epochs, batch_size=1),
                       sparsity=SparsityConfig(target=0.5))
    method = RigL(config, hparams)
    masking = Masking.attach(layer, "all")
    method.setup(SetupContext(model=layer, masking=masking, config=config,
                              loss_fn=F.cross_entropy, batches=lambda: iter(()),
                              steps_per_epoch=steps_per_epoch, device=torch.device("cpu"),
                              generator=method.generator))
    return layer, masking, method


def test_update_matches_the_reference_by_hand():
    layer, masking, method = tiny_rigl(RigLHparams(drop_fraction=0.5, noise_std=0.0,
                                                   drop_fraction_anneal="constant"))
    active = torch.tensor([1, 1, 1, 0, 1, 0, 1, 0, 0, 1, 0, 0], dtype=torch.bool)
    w = torch.tensor([0.5, -0.1, 0.9, 0, -0.3, 0, 0.05, 0, 0, 0.7, 0, 0])
    grad = torch.tensor([0.2, -0.8, 0.1, 0.6, 0.0, 0.9, 0.3, 0.05, -0.4, 0.0, -0.7, 0.1])
    masking.set_mask("", active.view(3, 4))
    with torch.no_grad():
        layer.weight.copy_(w.view(3, 4))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    opt.state[layer.weight]["momentum_buffer"] = torch.ones(3, 4)
    layer.weight.grad = grad.view(3, 4).clone()

    method.after_backward(layer, 1)  # t = 0: an update step (begin 0)
    opt.step()
    method.after_step(layer, opt, 1)

    # n_drop = int(6 * 0.5) = 3. Keep the top 3 of |w * m|: 2 (0.9), 9 (0.7), 0 (0.5); 1, 4, 6
    # dropped. Grow the top 3 of |grad| outside {0, 2, 9}: 5 (0.9), 1 (0.8), 10 (0.7).
    mask = masking.masks[""].flatten()
    assert mask.nonzero().flatten().tolist() == [0, 1, 2, 5, 9, 10]
    # 1 was dropped and regrown: it keeps its value; 5 and 10 are new: 0; no optimizer step.
    assert layer.weight.detach().flatten().tolist() == pytest_list(
        [0.5, -0.1, 0.9, 0, 0, 0, 0, 0, 0, 0.7, 0, 0])
    # Momentum reset at the new connections only (rigl reset_momentum, initial_acc_scale 0).
    momentum = opt.state[layer.weight]["momentum_buffer"].flatten()
    assert momentum.tolist() == [1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1]
    assert method.summary() == {"mask_updates": 1, "regrown_total": 2}


def pytest_list(values):
    return [float(torch.tensor(v, dtype=torch.float32)) for v in values]


def test_schedule_and_cosine_drop_count():
    # 1000 steps: the interval stays rigl's absolute 100 steps, end round(0.768 * 1000) = 768.
    _, masking, method = tiny_rigl(RigLHparams(), epochs=10, steps_per_epoch=100)
    assert (method.schedule.begin, method.schedule.end, method.schedule.frequency) == \
        (0, 768, 100)
    assert [t for t in range(1000) if method.schedule.is_update(t)] == list(range(0, 701, 100))
    # At t = 384 (half-way) the cosine gives 0.15: int(float32(6) * 0.15) = 0 of 6 active.
    assert abs(method.drop_fraction(384) - 0.15) < 1e-12
    # Default: ERK of one layer is uniform, 6 of 12 at 50%.
    assert masking.nonzero() == {"": 6}


def test_non_update_steps_mask_the_gradient_and_step():
    layer, masking, method = tiny_rigl(RigLHparams(update_interval=50))  # updates t=0, 50
    layer.weight.grad = torch.ones(3, 4)
    method.after_backward(layer, 2)  # t = 1: not an update
    assert torch.equal(layer.weight.grad, masking.masks[""].float())
