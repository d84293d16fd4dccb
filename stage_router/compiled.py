"""Which build of the pure core runs: the modules compiled by mypyc (`make compile`, next to
their sources) or the Python sources themselves.

Python loads a compiled module in preference to its source. That is what we want, unless
the compiled one is older than the source (someone edited the code since `make compile`) or
the interpreted build is asked for (LEADSCORE_INTERPRETED=1, used by `make test` to run the
unit tests on both builds). Then every module of the package is loaded from source, so a
stale compiled module can never run.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

_SOURCE = (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)


class _SourceOnly(importlib.abc.MetaPathFinder):
    """Finds the modules of one package among their `.py` files only."""

    def __init__(self, package: str) -> None:
        self.prefix = package + "."

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(self.prefix):
            return None
        for entry in path or ():
            spec = importlib.machinery.FileFinder(entry, _SOURCE).find_spec(fullname)
            if spec is not None:
                return spec
        return None


def interpreted_requested() -> bool:
    return os.environ.get("LEADSCORE_INTERPRETED", "") not in ("", "0")


def choose_build(package: str, directory: str) -> None:
    """Called by the package's `__init__`: load its modules from source when the compiled
    ones are stale or the interpreted build is requested."""
    folder = Path(directory)
    stale = any(
        compiled.stat().st_mtime < source.stat().st_mtime
        for compiled in folder.glob("*.so")
        if (source := folder / (compiled.name.split(".", 1)[0] + ".py")).exists()
    )
    if stale or interpreted_requested():
        sys.meta_path.insert(0, _SourceOnly(package))


def is_compiled(module: ModuleType) -> bool:
    """Whether `module` runs compiled (for the benchmark's table and the build test)."""
    return not (module.__file__ or "").endswith(".py")
