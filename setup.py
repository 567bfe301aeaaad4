"""Build the Cython kernels in csrc/ into mpiml._kernels.

Compiler flags are portable by default, so a wheel built on a login node runs on
older compute nodes. Set MPIML_NATIVE=1 to add -march=native (faster on the
machine that builds it, may crash with SIGILL elsewhere).
"""
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

# -fno-math-errno and -fno-trapping-math let loops with selects and rounding
# vectorise; unlike -ffast-math they keep IEEE NaN/Inf semantics.
flags = ["-O3", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math"]
if os.environ.get("MPIML_NATIVE", "") not in ("", "0"):
    flags += ["-march=native"]
if sys.platform == "darwin":
    flags += ["-Wno-unreachable-code"]

extensions = [
    Extension(
        "mpiml._kernels.sgd",
        ["csrc/sgd.pyx"],
        include_dirs=[numpy.get_include(), "csrc"],
        depends=["csrc/dense.h", "csrc/sparse.pxi"],
        extra_compile_args=flags,
        define_macros=[
            ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
            ("MPIML_COMPILE_FLAGS", '"' + " ".join(flags) + '"'),
        ],
    ),
    Extension(
        "mpiml._kernels.glm",
        ["csrc/glm.pyx"],
        include_dirs=["csrc"],
        depends=["csrc/dense.h", "csrc/glm.h"],
        extra_compile_args=flags,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
    Extension(
        "mpiml._kernels.stats",
        ["csrc/stats.pyx"],
        extra_compile_args=flags,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
    Extension(
        "mpiml._kernels.textparse",
        ["csrc/textparse.pyx"],
        include_dirs=[numpy.get_include(), "csrc"],
        extra_compile_args=flags,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
