"""Builds the compiled twins of ingestd's hot paths; pyproject.toml has the rest.

Each module in ``ext/`` is a Cython twin of a pure-Python module and builds
into the package next to it::

    python setup.py build_ext --inplace                        # release
    INGESTD_DEBUG_BUILD=1 python setup.py build_ext --inplace  # debug

The debug build turns on Cython's bounds, wraparound, initialisation and
None checks, defines ``INGESTD_DEBUG`` for the invariant checks in the
``.pyx`` files (``ingestd.codecs._walk_ext.DEBUG`` says which build is
loaded) and compiles without optimisation, with symbols for gdb. Switching
between the two rebuilds everything: the mode of the last build is kept in
``build/ext-mode``.

A twin's ``.pyx`` and ``.pxd`` are named after the pure module
(``ext/_walk.pyx``), its compiled module after the package slot it fills
(``ingestd.codecs._walk_ext``). Cython pairs a module with its own ``.pxd``
by module name only, so each ``.pxd`` is copied under that name into
``build/pxd`` first.
"""

from __future__ import annotations

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("INGESTD_DEBUG_BUILD") == "1"
ROOT = Path(__file__).parent
MODE_FILE = ROOT / "build" / "ext-mode"
PXD_DIR = ROOT / "build" / "pxd"

EXTENSIONS = [
    Extension("ingestd.codecs._walk_ext", ["ext/_walk.pyx"]),
    Extension("ingestd.codecs._lineproto_ext", ["ext/_lineproto.pyx"]),
]


def mode_changed(mode: str) -> bool:
    """Record this build's mode; True if the last build had another one.

    Neither cythonize nor build_ext notice a change of directives or macros
    alone, so without this a release build would keep a debug module.
    """
    last = MODE_FILE.read_text().strip() if MODE_FILE.exists() else ""
    if last != mode:
        MODE_FILE.parent.mkdir(exist_ok=True)
        MODE_FILE.write_text(mode + "\n")
    return last != mode


def stage_pxd(ext: Extension) -> None:
    """Copy the ``.pxd`` beside ``ext``'s ``.pyx`` to where Cython looks for it."""
    source = (ROOT / ext.sources[0]).with_suffix(".pxd")
    target = PXD_DIR.joinpath(*ext.name.split(".")).with_suffix(".pxd")
    text = source.read_bytes()
    if not target.exists() or target.read_bytes() != text:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text)  # a new mtime: cythonize sees the change


def extensions() -> list[Extension]:
    for ext in EXTENSIONS:
        stage_pxd(ext)
        ext.define_macros = [("INGESTD_DEBUG", "1" if DEBUG else "0")]
        if DEBUG:
            ext.extra_compile_args = ["-O0", "-g3"]
    return cythonize(
        EXTENSIONS,
        include_path=[str(PXD_DIR)],
        force=mode_changed("debug" if DEBUG else "release"),
        compiler_directives={
            "language_level": 3,
            "embedsignature": True,
            "boundscheck": DEBUG,
            "wraparound": DEBUG,
            "initializedcheck": DEBUG,
            "nonecheck": DEBUG,
        },
    )


setup(
    ext_modules=extensions(),
    package_data={"ingestd.codecs": ["*.pyi"]},
)
