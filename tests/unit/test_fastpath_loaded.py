"""Each fastpath selector must pick its compiled module, and only fall back when told to.

Checked per concept in subprocesses so the environment variable is read at a fresh import. Each
implementation checks the setting that should select it: the compiled one with the variable
unset (or "", or "0"), the twin with ``CLEXPROXY_NO_EXTENSIONS=1``.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
NO_EXTENSIONS = os.environ.get("CLEXPROXY_NO_EXTENSIONS", "") not in ("", "0")
CONCEPTS = ("sse", "limits", "keys", "scan", "deltas", "h1")  # each one's fixture gives its module for `impl`

# Prints whether the package says it uses the extensions, and the module every public name of the selector comes from.
PROBE = """
import importlib
import clexproxy.fastpath as f
selector = importlib.import_module("clexproxy.fastpath.{concept}")
print(f.USING_EXTENSION, *sorted({{getattr(selector, name).__module__ for name in selector.__all__}}))
"""

BLOCKED = """
import sys
sys.modules["{compiled}"] = None  # what a missing or broken build looks like
try:
    import clexproxy.fastpath.{concept}
except ImportError as exc:
    print("ImportError", "CLEXPROXY_NO_EXTENSIONS" in str(exc), "{compiled}" in str(exc))
else:
    print("imported", clexproxy.fastpath.USING_EXTENSION)
"""


def run(code: str, flag: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "CLEXPROXY_NO_EXTENSIONS"}
    if flag is not None:
        env["CLEXPROXY_NO_EXTENSIONS"] = flag
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


@pytest.mark.parametrize("concept", CONCEPTS)
def test_selector_resolves_to_this_implementation(request: pytest.FixtureRequest, impl: str, concept: str) -> None:
    chosen: ModuleType = request.getfixturevalue(concept)
    compiled = impl == "c"
    flags = [None, "", "0"] if compiled else ["1", "yes"]
    for flag in flags:
        expected = f"{compiled} {chosen.__name__}"
        assert run(PROBE.format(concept=concept), flag) == expected, f"CLEXPROXY_NO_EXTENSIONS={flag!r}"


@pytest.mark.parametrize("concept", CONCEPTS)
def test_missing_extension_fails_loudly_unless_disabled(impl: str, concept: str) -> None:
    code = BLOCKED.format(concept=concept, compiled=f"clexproxy.fastpath._{concept}")
    if impl == "c":
        # No silent fallback: the error names the missing module and the switch that would allow the twin.
        assert run(code, None) == "ImportError True True"
    else:
        assert run(code, "1") == "imported False"


@pytest.mark.parametrize("concept", CONCEPTS)
def test_in_process_selection_matches_the_flag(request: pytest.FixtureRequest, impl: str, concept: str) -> None:
    from clexproxy import fastpath

    assert fastpath.USING_EXTENSION is (not NO_EXTENSIONS)
    selector = importlib.import_module(f"clexproxy.fastpath.{concept}")
    chosen: ModuleType = request.getfixturevalue(concept)
    assert set(selector.__all__) == set(chosen.__all__)
    if (impl == "c") is fastpath.USING_EXTENSION:
        assert all(getattr(selector, name) is getattr(chosen, name) for name in chosen.__all__)


def test_the_package_loads_no_concept() -> None:
    """Callers import from the concept selectors: the package itself re-exports none of their names."""
    code = "import sys, clexproxy.fastpath as f; print(sorted(f.__all__), [m for m in sys.modules if 'fastpath.' in m])"
    assert run(code, None) == "['NO_EXTENSIONS', 'USING_EXTENSION', 'missing_build'] []"
