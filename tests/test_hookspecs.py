"""Meta-tests on the plugin contract (as datasette does): every hook is documented and tested."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from dsvl_adapt import hookspecs

TESTS = Path(__file__).parent


@pytest.mark.parametrize("name", hookspecs.HOOK_NAMES)
def test_every_hook_has_a_docstring_and_type_hints(name):
    function = getattr(hookspecs, name)
    assert function.__doc__ and len(function.__doc__.strip()) > 40, f"{name} needs a real docstring"
    signature = inspect.signature(function)
    for parameter in signature.parameters.values():
        assert parameter.annotation is not inspect.Parameter.empty, f"{name}({parameter.name}) has no type"
    assert signature.return_annotation is not inspect.Signature.empty


@pytest.mark.parametrize("name", hookspecs.HOOK_NAMES)
def test_every_hook_is_exercised_by_a_test(name):
    sources = "\n".join(p.read_text() for p in TESTS.rglob("test_*.py") if p.name != "test_hookspecs.py")
    assert name in sources, f"no test mentions {name}"


def test_hook_names_share_the_prefix():
    assert hookspecs.HOOK_NAMES and all(n.startswith("dsvl_adapt_") for n in hookspecs.HOOK_NAMES)
