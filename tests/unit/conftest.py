"""Runs every fast-path test against both implementations: the compiled extension and its twin.

The compiled one must be built for the suite to pass (a missing build fails, it is not skipped),
unless ``CLEXPROXY_NO_EXTENSIONS=1`` says this run is deliberately pure-Python.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

NO_EXTENSIONS = os.environ.get("CLEXPROXY_NO_EXTENSIONS", "") not in ("", "0")

_MODULES = {"c": "clexproxy._fastpath", "py": "clexproxy._fastpath_py"}


@pytest.fixture(scope="session", params=[pytest.param("c", id="c"), pytest.param("py", id="py")])
def fp(request: pytest.FixtureRequest) -> ModuleType:
    """The implementation under test; session-scoped so hypothesis tests may use it."""
    which: str = request.param
    if which == "c":
        if NO_EXTENSIONS:
            pytest.skip("CLEXPROXY_NO_EXTENSIONS is set: the compiled extension is not under test")
        try:
            return importlib.import_module(_MODULES["c"])
        except ImportError as exc:
            pytest.fail(
                f"clexproxy._fastpath is not built ({exc}); run `python setup.py build_ext --inplace` "
                "or set CLEXPROXY_NO_EXTENSIONS=1",
                pytrace=False,
            )
    return importlib.import_module(_MODULES["py"])


@pytest.fixture(scope="session")
def fp_other(fp: ModuleType) -> ModuleType:
    """The other implementation than `fp`, for tests that check the two never diverge."""
    if fp.__name__ == _MODULES["c"]:
        return importlib.import_module(_MODULES["py"])
    if NO_EXTENSIONS:
        pytest.skip("CLEXPROXY_NO_EXTENSIONS is set: there is no compiled twin to compare with")
    try:
        return importlib.import_module(_MODULES["c"])
    except ImportError as exc:
        pytest.fail(f"clexproxy._fastpath is not built ({exc})", pytrace=False)
