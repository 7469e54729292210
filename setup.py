"""Builds the optional native kernel; everything else is in pyproject.toml.

``pytreeparams._native`` (one-pass moments for summaries) is optional: where
no C compiler is at hand the build goes on without it and pytreeparams uses
NumPy instead (set ``PTP_NO_NATIVE=1`` to skip it on purpose).
"""

import os
import sys

from setuptools import Extension, setup

# -fno-wrapv undoes CPython's -fwrapv, which keeps GCC from vectorizing the bfloat16 loop well
flags = [] if sys.platform == 'win32' else ['-O3', '-fno-strict-aliasing', '-fno-wrapv']
ext = [
    Extension(
        'pytreeparams._native',
        ['pytreeparams/_native.c'],
        extra_compile_args=flags,
        optional=True,
    )
]
setup(ext_modules=[] if os.environ.get('PTP_NO_NATIVE') else ext)
