"""bench.plugins.lookup: the one name lookup of the model and dataset registries."""

from types import SimpleNamespace

import pytest

import bench.plugins as plugins
from bench.errors import UserError
from bench.models import get_model_spec


class Spec:
    pass


def test_lookup_discovers_entry_points_once_and_names_the_valid_ones(monkeypatch):
    mine = Spec()
    calls = []

    def fake_entry_points(group):
        calls.append(group)
        return [SimpleNamespace(name="mynet", value="pkg:MYNET", load=lambda: mine)]

    monkeypatch.setattr(plugins, "entry_points", fake_entry_points)
    monkeypatch.setattr(plugins, "_loaded", set())
    registry = {"a": Spec(), "c": Spec()}
    assert plugins.lookup("a", registry, "g.test", Spec, "model") is registry["a"]
    assert calls == []  # a built-in name needs no discovery
    assert plugins.lookup("mynet", registry, "g.test", Spec, "model") is mine
    with pytest.raises(UserError) as err:
        plugins.lookup("b", registry, "g.test", Spec, "widget", ", or x:NAME")
    assert str(err.value) == "unknown widget 'b'; valid: a, c, mynet, or x:NAME"
    assert calls == ["g.test"]  # discovered once per process


def test_unknown_model_message():
    with pytest.raises(UserError) as err:
        get_model_spec("resnet9000")
    assert str(err.value).startswith("unknown model 'resnet9000'; valid: ")
    assert str(err.value).endswith(", or tv:NAME for a torchvision classification model")
