"""`clexproxy.fastpath` must pick the compiled module, and only fall back when told to.

Checked in subprocesses so the environment variable is read at a fresh import. Each
implementation checks the setting that should select it: the compiled one with the variable
unset (or "", or "0"), the twin with ``CLEXPROXY_NO_EXTENSIONS=1``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
NO_EXTENSIONS = os.environ.get("CLEXPROXY_NO_EXTENSIONS", "") not in ("", "0")
COMPILED = "clexproxy._fastpath"

PROBE = """
import clexproxy.fastpath as f
print(f.USING_EXTENSION, f.SSEParser.__module__, f.has_usage.__module__)
"""

BLOCKED = """
import sys
sys.modules["clexproxy._fastpath"] = None  # what a missing or broken build looks like
try:
    import clexproxy.fastpath
except ImportError as exc:
    print("ImportError", "CLEXPROXY_NO_EXTENSIONS" in str(exc))
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


def test_selector_resolves_to_this_implementation(fp: ModuleType) -> None:
    compiled = fp.__name__ == COMPILED
    flags = [None, "", "0"] if compiled else ["1", "yes"]
    for flag in flags:
        assert run(PROBE, flag) == f"{compiled} {fp.__name__} {fp.__name__}", f"CLEXPROXY_NO_EXTENSIONS={flag!r}"


def test_missing_extension_fails_loudly_unless_disabled(fp: ModuleType) -> None:
    if fp.__name__ == COMPILED:
        # No silent fallback: the error names the switch that would allow the twin.
        assert run(BLOCKED, None) == "ImportError True"
    else:
        assert run(BLOCKED, "1") == "imported False"


def test_in_process_selection_matches_the_flag(fp: ModuleType) -> None:
    from clexproxy import fastpath

    assert fastpath.USING_EXTENSION is (not NO_EXTENSIONS)
    assert set(fp.__all__) <= set(fastpath.__all__)
    if (fp.__name__ == COMPILED) is fastpath.USING_EXTENSION:
        assert all(getattr(fastpath, name) is getattr(fp, name) for name in fp.__all__)
