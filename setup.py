"""Builds the compiled fastpath extensions, one per concept (`clexproxy.fastpath._sse`, ...).

A failed compile fails the build: a gateway that silently falls back to the pure-Python
twin would be several times slower without anyone noticing. Only an explicit
``CLEXPROXY_NO_EXTENSIONS=1`` builds and runs pure, as aiohttp's AIOHTTP_NO_EXTENSIONS does.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

NO_EXTENSIONS = os.environ.get("CLEXPROXY_NO_EXTENSIONS", "") not in ("", "0")
CONCEPTS = ("sse", "limits", "keys", "scan", "deltas", "h1")

if NO_EXTENSIONS:
    ext_modules: list[Extension] = []
else:
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [
            Extension(f"clexproxy.fastpath._{name}", [f"clexproxy/fastpath/_{name}.pyx"], extra_compile_args=["-O3"])
            for name in CONCEPTS
        ],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False, "cdivision": True},
    )

setup(ext_modules=ext_modules)
