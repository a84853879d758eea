"""Runs every fast-path test against both implementations: the compiled modules and their twins.

`impl` is the one parametrized fixture ([c] and [py]); each concept's fixture (`sse`, `limits`,
`keys`, `scan`, `deltas`) gives that concept's module for it, and `<concept>_other` the other
implementation's module, for tests that check the two never diverge. All are session-scoped so
hypothesis tests may use them.

The compiled modules must be built for the suite to pass (a missing build fails, it is not
skipped), unless ``CLEXPROXY_NO_EXTENSIONS=1`` says this run is deliberately pure-Python.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

NO_EXTENSIONS = os.environ.get("CLEXPROXY_NO_EXTENSIONS", "") not in ("", "0")

COMPILED = "c"
PURE = "py"
CONCEPTS = ("sse", "limits", "keys", "scan", "deltas", "h1")


def module_name(concept: str, impl: str) -> str:
    """`clexproxy.fastpath._sse` for the compiled SSE module, `clexproxy.fastpath._sse_py` for its twin."""
    return f"clexproxy.fastpath._{concept}" + ("" if impl == COMPILED else "_py")


def load(concept: str, impl: str) -> ModuleType:
    name = module_name(concept, impl)
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if impl == PURE:
            raise
        pytest.fail(
            f"{name} is not built ({exc}); run `python setup.py build_ext --inplace` or set CLEXPROXY_NO_EXTENSIONS=1",
            pytrace=False,
        )


@pytest.fixture(scope="session", params=[pytest.param(COMPILED, id="c"), pytest.param(PURE, id="py")])
def impl(request: pytest.FixtureRequest) -> str:
    """The implementation under test: "c" (the compiled modules) or "py" (their twins)."""
    which: str = request.param
    if which == COMPILED and NO_EXTENSIONS:
        pytest.skip("CLEXPROXY_NO_EXTENSIONS is set: the compiled extensions are not under test")
    return which


@pytest.fixture(scope="session")
def other_impl(impl: str) -> str:
    """The other implementation than `impl`."""
    if impl == COMPILED:
        return PURE
    if NO_EXTENSIONS:
        pytest.skip("CLEXPROXY_NO_EXTENSIONS is set: there is no compiled twin to compare with")
    return COMPILED


@pytest.fixture(scope="session")
def sse(impl: str) -> ModuleType:
    return load("sse", impl)


@pytest.fixture(scope="session")
def sse_other(other_impl: str) -> ModuleType:
    return load("sse", other_impl)


@pytest.fixture(scope="session")
def limits(impl: str) -> ModuleType:
    return load("limits", impl)


@pytest.fixture(scope="session")
def limits_other(other_impl: str) -> ModuleType:
    return load("limits", other_impl)


@pytest.fixture(scope="session")
def keys(impl: str) -> ModuleType:
    return load("keys", impl)


@pytest.fixture(scope="session")
def scan(impl: str) -> ModuleType:
    return load("scan", impl)


@pytest.fixture(scope="session")
def scan_other(other_impl: str) -> ModuleType:
    return load("scan", other_impl)


@pytest.fixture(scope="session")
def deltas(impl: str) -> ModuleType:
    return load("deltas", impl)


@pytest.fixture(scope="session")
def deltas_other(other_impl: str) -> ModuleType:
    return load("deltas", other_impl)


@pytest.fixture(scope="session")
def h1(impl: str) -> ModuleType:
    return load("h1", impl)


@pytest.fixture(scope="session")
def h1_other(other_impl: str) -> ModuleType:
    return load("h1", other_impl)
