"""The method registry: one line per method, lazily imported."""

import subprocess
import sys

import pytest

import methods
from bench.errors import UserError
from methods.registry import METHODS, all_methods, get_method


def test_importing_masking_loads_no_method_module():
    code = ("import sys, methods.masking, methods.selection, methods.schedules; "
            "print(sorted(m for m in sys.modules if m.startswith('methods')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert eval(out) == ["methods", "methods.masking", "methods.registry", "methods.schedules",
                         "methods.selection"]


def test_every_entry_names_its_class_and_the_package_reexports_them():
    classes = all_methods()
    assert list(classes) == list(METHODS)
    assert all(cls.name == name for name, cls in classes.items())
    assert isinstance(methods.REGISTRY, dict) and methods.REGISTRY == classes
    assert methods.get_method("gmp") is classes["gmp"]


def test_the_registry_keeps_its_order_whichever_method_was_loaded_first():
    code = ("from methods.registry import METHODS, all_methods, get_method; get_method('set'); "
            "get_method('gmp'); print(list(all_methods()) == list(METHODS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "True"


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(UserError, match=r"unknown method 'nope'; valid: deepr, dense, dsr"):
        get_method("nope")


def test_a_method_given_no_hparams_gets_its_defaults():
    # One rule in Method.__init__, no per-method fallback: None -> the method's Hparams().
    from bench.config import RunConfig
    from methods.registry import all_methods

    for name, cls in all_methods().items():
        method = cls(RunConfig(), None)
        assert method.hparams == cls.Hparams(), name
