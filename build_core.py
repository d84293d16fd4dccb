"""Compile the pure core with mypyc: `python build_core.py FILE...` (the Makefile's `compile`).

This is what the `mypyc` command does, with one difference: the compiled modules share their
runtime through one extension module, and mypyc names it after a hash and puts it at the top
level, next to the packages. An editable install only maps leadscore's packages, so the
installed `leadscore` command could not import that module from any other directory. Named
inside the lowest compiled package (`stage_router.core__mypyc`), it is found wherever the
packages are.
"""

import sys

from mypyc.build import mypycify
from setuptools import setup

SHARED_MODULE_GROUP = "stage_router.core"

if __name__ == "__main__":
    setup(
        name="leadscore-compiled-core",
        ext_modules=mypycify(sys.argv[1:], group_name=SHARED_MODULE_GROUP, opt_level="3"),
        script_args=["build_ext", "--inplace"],
    )
