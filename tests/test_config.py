"""Run identity: canonical form, default-dropping, pinned run ids."""

from __future__ import annotations

import pytest

from bench.config import (
    DataConfig,
    MethodConfig,
    ModelConfig,
    RunConfig,
    SparsityConfig,
    TrainConfig,
    canonical_json,
    from_dict,
    run_id,
    to_dict,
)
from bench.errors import UserError
from methods.gmp import GMPHparams


def test_default_fields_are_left_out_of_the_canonical_form():
    config = RunConfig(method=MethodConfig("static"), sparsity=SparsityConfig(target=0.9))
    assert canonical_json(config) == '{"method":{"name":"static"},"sparsity":{"target":0.9}}'


def test_explicit_default_values_and_int_floats_hash_the_same():
    a = RunConfig(train=TrainConfig(lr=0.01, epochs=20), sparsity=SparsityConfig(target=0.5))
    b = RunConfig(sparsity=SparsityConfig(target=0.5))
    assert run_id(a) == run_id(b)
    c = RunConfig(train=TrainConfig(lr=1.0))
    d = RunConfig(train=TrainConfig(lr=1))
    assert run_id(c) == run_id(d)


def test_default_hparams_hash_like_no_hparams():
    a = RunConfig(method=MethodConfig("gmp", GMPHparams()))
    b = RunConfig(method=MethodConfig("gmp"))
    c = RunConfig(method=MethodConfig("gmp", GMPHparams(end_fraction=0.5)))
    assert run_id(a) == run_id(b) != run_id(c)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (RunConfig(), "b7a589ab0c99"),
        (RunConfig(method=MethodConfig("static"), sparsity=SparsityConfig(target=0.9)),
         "c1a9843e0925"),
        (RunConfig(model=ModelConfig("mnist1d_mlp"), method=MethodConfig("gmp"),
                   sparsity=SparsityConfig(target=0.95, distribution="erk"), seed=2),
         "d8a6d055324e"),
        (RunConfig(data=DataConfig("cifar10", augment=True), model=ModelConfig("resnet20"),
                   train=TrainConfig(optimizer="sgd", lr=0.1, milestones=(80, 120),
                                     lr_schedule="step")),
         "227cd2a82aab"),
    ],
)
def test_pinned_run_ids(config, expected):
    # These ids name run folders on users' disks: changing one orphans finished runs.
    assert run_id(config) == expected


def test_round_trip_through_dict():
    config = RunConfig(model=ModelConfig("mnist1d_mlp", width=0.5),
                       method=MethodConfig("gmp", GMPHparams(end_fraction=0.5)),
                       train=TrainConfig(milestones=(3, 5)), seed=4)
    again = from_dict(to_dict(config), GMPHparams)
    assert again == config
    assert run_id(again) == run_id(config)


@pytest.mark.parametrize("target", [-0.1, 1.0, 1.5])
def test_sparsity_outside_unit_interval_is_rejected(target):
    with pytest.raises(UserError, match=r"outside \[0, 1\)"):
        RunConfig(sparsity=SparsityConfig(target=target)).validate()


def test_unknown_choice_lists_valid_ones():
    with pytest.raises(UserError, match='expected one of "all", "dense_first"'):
        RunConfig(sparsity=SparsityConfig(layer_policy="most")).validate()
