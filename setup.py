"""Build the Cython kernels in csrc/ into mpiml._kernels.

Compiler flags are portable by default, so a wheel built on a login node runs on
older compute nodes. Set MPIML_NATIVE=1 to add -march=native (faster on the
machine that builds it, may crash with SIGILL elsewhere).
"""
import os
import shlex
import shutil
import subprocess
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
        depends=["csrc/dense.h", "csrc/sparse.pxi", "csrc/steploop_api.h", "csrc/steploop_api.pxd"],
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



def mpi_flags():
    """Compile and link flags of the MPI compiler wrapper ($MPICC, else `mpicc` on PATH;
    the `mpich` wheel installs one in the environment's bin/), or None. MPIML_STEP_LOOP=python
    leaves the compiled step loop out."""
    if os.environ.get("MPIML_STEP_LOOP", "") == "python":
        return None
    cc = os.environ.get("MPICC") or shutil.which("mpicc")
    if not cc:
        return None
    for show in ("-show", "--showme"):       # MPICH, Open MPI
        try:
            out = subprocess.run([cc, show], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode == 0 and out.stdout.strip():
            break
    else:
        return None
    words = shlex.split(out.stdout)[1:]       # drop the compiler itself
    inc = [w[2:] for w in words if w.startswith("-I")]
    libdirs = [w[2:] for w in words if w.startswith("-L")]
    libs = [w[2:] for w in words if w.startswith("-l")]
    link = [w for w in words if w.startswith("-Wl,") or w == "-pthread"]
    if "mpi" not in libs:
        return None
    return dict(include_dirs=inc, library_dirs=libdirs, libraries=libs,
                runtime_library_dirs=[d for d in libdirs if os.path.isabs(d)],
                extra_link_args=link)


# The compiled step loop (csrc/steploop.pyx) is the one module that calls MPI: built
# where an MPI compiler wrapper is found, and optional (a failed build leaves it out and
# mpiml runs its Python step loop; `mpiml info` says which).
_mpi = mpi_flags()
if _mpi is not None:
    extensions.append(Extension(
        "mpiml._kernels.steploop",
        ["csrc/steploop.pyx"],
        include_dirs=["csrc"] + _mpi["include_dirs"],
        library_dirs=_mpi["library_dirs"],
        libraries=_mpi["libraries"],
        runtime_library_dirs=_mpi["runtime_library_dirs"],
        extra_link_args=_mpi["extra_link_args"],
        depends=["csrc/steploop.h", "csrc/steploop_api.h", "csrc/steploop_api.pxd"],
        extra_compile_args=flags,
        optional=True,
    ))
else:
    print("mpiml: no MPI compiler wrapper (mpicc) found: building without the compiled "
          "step loop (install the `mpich` wheel or load the site MPI first)", file=sys.stderr)

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
