"""Builds envconv's C++ CPU kernel with the package, as torchvision builds its ops (metadata: pyproject.toml).

``pip install .`` / ``python -m build`` compile ``src/envconv/csrc/envelope_cpu.cpp`` into
``envconv/_C.so`` with torch's ``BuildExtension`` and record what it was built for in
``envconv/_C.json`` (:mod:`envconv.ops.build_info`). It is compiled against one torch's C++ ABI
(the kernel uses ATen's tensor API, which the LibTorch stable ABI does not cover), so the package
then requires that torch release. Environment:

* ``ENVCONV_CPU_ARCH``: the ``-march`` of the build (default ``native``: fastest, and loaded only
  on a CPU with the same instruction set; ``x86-64-v3`` or ``generic`` for a wheel to share).
* ``ENVCONV_NO_EXTENSION=1``: build no kernel (envconv then compiles it on first use, or runs its
  composite ATen kernels).
"""

import importlib.util
import json
import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
DEPENDENCIES = ["numpy>=1.24", "pyyaml>=5.4", "tqdm>=4.60"]


def _build_info():
    spec = importlib.util.spec_from_file_location("build_info", ROOT / "src" / "envconv" / "ops" / "build_info.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _with_kernel() -> dict:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    info = _build_info()
    arch = os.environ.get("ENVCONV_CPU_ARCH", "native")
    flags = ["-O3", "-g0", "-fopenmp"] + ([] if arch == "generic" else [f"-march={arch}"])  # -g0: no debug info

    class Build(BuildExtension):
        def build_extension(self, ext):
            super().build_extension(ext)
            record = {"torch": torch.__version__, "march": arch, "cpu": info.cpu_tag() if arch == "native" else None}
            folders = {Path(self.get_ext_fullpath(ext.name)).parent}
            if getattr(self, "editable_mode", False):  # pip install -e: the library is copied into the source tree
                folders.add(Path(self.get_finalized_command("build_py").get_package_dir("envconv")))
            for folder in folders:
                (folder / info.INFO).write_text(json.dumps(record) + "\n")

    release = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    return dict(ext_modules=[CppExtension("envconv._C", ["src/envconv/csrc/envelope_cpu.cpp"],
                                          extra_compile_args=flags, extra_link_args=["-fopenmp"])],
                cmdclass={"build_ext": Build.with_options(no_python_abi_suffix=True)},
                install_requires=[f"torch=={release}.*", *DEPENDENCIES])


if os.environ.get("ENVCONV_NO_EXTENSION", "") not in ("", "0"):
    setup(install_requires=["torch>=2.14", "ninja>=1.11", *DEPENDENCIES])  # compiled on first use instead
else:
    setup(**_with_kernel())
