"""The C++ CPU kernels: registered as ``torch.ops.envconv._cpu_envelope_*``.

``csrc/envelope_cpu.cpp`` computes the 1-D passes with loops that vectorise over contiguous
memory, and a backward that takes the sigma gradient from the paper's eq. (8) - one
derivative-of-Gaussian pass per axis and a dot product - instead of the generic depth-wise
weight gradient. Two loop orders, chosen by the measured rule
:func:`envconv.ops.dispatch.ring_loop_applies`: 2-D maps with one sigma per channel and 16 or
more channels run a two-pass loop on channels_last memory that keeps the width pass in a ring of
rows (never stored whole); every other map runs one pass per axis (last axis first) on
contiguous or channels_last memory, the backward sweeping the passes in reverse with each axis's
sigma gradient taken on the way. It registers its functions as ops
with ``TORCH_LIBRARY_FRAGMENT(envconv, ...)``; :mod:`envconv.ops.library` calls them inside
the public ``envconv::envelope`` ops on CPU tensors.

**Where the kernel comes from.** An installed envconv loads the library ``setup.py`` built with
the package (``envconv/_C.so``: no compiler, ninja or cache needed at run time), if its build
record (:mod:`envconv.ops.build_info`) matches this torch and CPU. A source tree used without a
build (``PYTHONPATH=src``), or a package whose kernel does not match, compiles it with the
system's C++ compiler and ninja by :func:`torch.utils.cpp_extension.load` the first time it is
needed (announced on stderr, about a minute on 2 cores, then cached in torch's extension
directory under a name from :func:`build_tag`: CPU, Python, torch and kernel source).
``python -m envconv.ops`` says which kernel is used (and builds it ahead where it must). If
neither works, or ``ENVCONV_NO_EXTENSION=1`` is set, envconv warns once, ``unavailable_reason()``
says why, and the ops use their composite (ATen) implementation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .build_info import INFO, LIBRARY, cpu_tag
from .composite import per_axis
from .layout import is_channels_last, memory_format

__all__ = ["available", "load", "build_tag", "build_directory", "packaged_mismatch", "main", "unavailable_reason",
           "supports", "forward", "backward"]

_PACKAGE = Path(__file__).resolve().parent.parent
_SOURCE = _PACKAGE / "csrc" / "envelope_cpu.cpp"
_loaded = False
_failed: Optional[str] = None
#: Where the loaded kernel came from: "package" (built with it) or "jit" (compiled on first use).
origin: Optional[str] = None


def build_tag() -> str:
    """A short hash naming the cached build: CPU flags, Python, torch version and install, kernel source.

    Any of these changing (another virtual environment, a torch upgrade, an edited kernel)
    selects another build directory instead of overwriting, or loading, a foreign one.
    """
    key = "|".join([cpu_tag(), sys.version, torch.__version__, str(Path(torch.__file__).resolve().parent),
                    hashlib.sha1(_SOURCE.read_bytes()).hexdigest()])
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def build_directory(name: str) -> Path:
    """Where extension ``name`` is built and cached: in ``$TORCH_EXTENSIONS_DIR`` or torch's default root."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / name


def _is_built(name: str) -> bool:
    """Whether the extension cache already holds the built library ``name`` (no compile ahead)."""
    return any(build_directory(name).glob(f"{name}*.so"))


def packaged_mismatch(package: Optional[Path] = None) -> Optional[str]:
    """``None`` if the kernel built with the package (in folder ``package``) can be loaded here, else why not."""
    package = _PACKAGE if package is None else package
    library, info = package / LIBRARY, package / INFO
    if not library.is_file():
        return "the package was not built with its kernel (a source tree, or ENVCONV_NO_EXTENSION=1 at install)"
    try:
        record = json.loads(info.read_text())
        built_for, cpu = record["torch"], record["cpu"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"its build record {info} is missing or unreadable ({type(err).__name__}: {err})"
    if built_for != torch.__version__:
        return f"it was built for torch {built_for}, this is torch {torch.__version__}"
    if cpu not in (None, cpu_tag()):
        return "it was built with -march=native on a CPU with other instructions"
    return None


def load() -> bool:
    """Load the C++ ops: the package's kernel, else one compiled on first use; ``False`` if neither works."""
    global _loaded, _failed, origin
    if _loaded or _failed is not None:
        return _loaded
    if os.environ.get("ENVCONV_NO_EXTENSION", "") not in ("", "0"):
        _failed = "disabled by ENVCONV_NO_EXTENSION"
        return False
    mismatch = packaged_mismatch()
    if mismatch is None:
        torch.ops.load_library(str(_PACKAGE / LIBRARY))
        _loaded, origin = True, "package"
        return True
    if (_PACKAGE / LIBRARY).is_file():  # installed, but not for this torch or CPU: say why it compiles
        print(f"envconv: not loading the package's C++ kernel: {mismatch}", file=sys.stderr, flush=True)
    try:
        # torch's build helpers warn (and log) about CUDA and TorchScript here: not our concern
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.utils.cpp_extension import load as load_extension

            name = f"envconv_envelope_cpu_{build_tag()}"
            building = not _is_built(name)
            if building:  # the first use in this environment waits for the compiler: say so
                print("envconv: building the C++ CPU envelope kernel (once per environment and CPU type, about "
                      "a minute; `python -m envconv.ops` builds it ahead) ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            build_directory(name).mkdir(parents=True, exist_ok=True)
            load_extension(name=name, sources=[str(_SOURCE)], build_directory=str(build_directory(name)),
                           extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
                           is_python_module=False, verbose=False)
            if building:
                print(f"envconv: built the C++ CPU envelope kernel in {time.perf_counter() - start:.0f} s",
                      file=sys.stderr, flush=True)
        _loaded, origin = True, "jit"
    except Exception as err:  # a missing compiler, ninja, headers or OpenMP: fall back to the ATen ops
        _failed = f"{type(err).__name__}: {err}"
        warnings.warn(f"envconv: the C++ CPU envelope kernel could not be built ({_failed}); "
                      f"using the composite (ATen) implementation instead", RuntimeWarning, stacklevel=2)
    return _loaded


def available() -> bool:
    """Whether the C++ kernel can be used; the first call loads it, or compiles it (about a minute) if it must."""
    return load()


def unavailable_reason() -> Optional[str]:
    """Why the C++ kernel cannot be used (``None`` when it can, or has not been tried)."""
    return _failed


def supports(x: torch.Tensor, padding_mode: str) -> Optional[str]:
    """``None`` if the C++ kernel handles ``x``, else the reason it does not.

    It handles float32/float64 CPU tensors with 1-3 spatial dims and zero padding, with one sigma
    per channel or one per channel and axis. Inputs in another memory format than contiguous or
    channels_last are made contiguous on the way in.
    """
    if x.dim() not in (3, 4, 5):
        return f"it filters maps with 1-3 spatial dims, got {x.dim() - 2}"
    if x.device.type != "cpu":
        return f"it runs on CPU tensors, got a {x.device.type} tensor"
    if x.dtype not in (torch.float32, torch.float64):
        return f"it computes in float32/float64, got {x.dtype}"
    if padding_mode != "zeros":
        return f"it pads with zeros, got padding_mode={padding_mode!r}"
    return None


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def _like_input(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The kernel's result in ``x``'s memory format."""
    return y.contiguous(memory_format=memory_format(x))


def _taps(kernels, x: torch.Tensor) -> torch.Tensor:
    """The N-D kernel's tap tensor (dims, k, C) from one (C, k) kernel per spatial axis.

    Kernels of different sizes (a size per axis) are centred in the largest with zeros around
    them; the kernel runs each axis with its own size (:func:`_sizes`), never the zeros.
    """
    k = max(kernel.shape[1] for kernel in kernels)
    return torch.stack([F.pad(kernel.to(x.dtype), ((k - kernel.shape[1]) // 2,) * 2).t()
                        for kernel in kernels]).contiguous()


def _sizes(kernels) -> list:
    return [int(kernel.shape[1]) for kernel in kernels]


def _nd_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` in a layout the N-D kernel reads: channels_last as it is, anything else contiguous."""
    return x if is_channels_last(x) else x.contiguous()


def forward(x: torch.Tensor, kernel, stride: Sequence[int], ring: bool = False) -> torch.Tensor:
    """The envelope of ``x`` with 1-D kernels, output every ``stride`` positions, in ``x``'s memory format.

    ``kernel``: one (C, k) tensor for every spatial axis, or a sequence of them, one per axis (as
    in ``envconv.ops.composite.forward``). ``ring``: the 2-D ring loop (2-D maps, one kernel)
    instead of the pass per axis; :func:`~envconv.ops.dispatch.ring_loop_applies` is the rule.
    """
    if ring:
        y = torch.ops.envconv._cpu_envelope_forward(_channels_last(x), kernel.to(x.dtype).t().contiguous(), *stride)
        return _like_input(y, x)
    kernels = per_axis(kernel, x.dim() - 2)
    y = torch.ops.envconv._cpu_envelope_nd_forward(_nd_input(x), _taps(kernels, x), list(stride), _sizes(kernels))
    return _like_input(y, x)


def backward(grad: torch.Tensor, x: torch.Tensor, kernel, dkernel, stride: Sequence[int],
             need_x: bool, ring: bool = False) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    """``(grad_x or None, sigma gradient)`` by the eq. (8) backward.

    ``kernel`` / ``dkernel`` / ``ring``: as in :func:`forward`. The sigma gradient is per channel
    (C,) for one kernel, per channel and axis (C, n) for one kernel per axis.
    """
    if ring:
        grad_x, grad_sigma = torch.ops.envconv._cpu_envelope_backward(
            grad.to(x.dtype), _channels_last(x), kernel.to(x.dtype).t().contiguous(),
            dkernel.to(x.dtype).t().contiguous(), *stride, need_x)
        return (_like_input(grad_x, x) if need_x else None), grad_sigma
    dims, source = x.dim() - 2, _nd_input(x)
    kernels = per_axis(kernel, dims)
    grad_x, grad_sigma = torch.ops.envconv._cpu_envelope_nd_backward(
        grad.to(x.dtype).contiguous(memory_format=memory_format(source)), source, _taps(kernels, x),
        _taps(per_axis(dkernel, dims), x), list(stride), _sizes(kernels), need_x)
    grad_sigma = grad_sigma.sum(1) if isinstance(kernel, torch.Tensor) else grad_sigma
    return (_like_input(grad_x, x) if need_x else None), grad_sigma


def main() -> int:
    """``python -m envconv.ops``: load the kernel (the package's, else compiled now) and say which; 1 if none."""
    if not load():
        print(f"envconv: no C++ CPU kernel: {unavailable_reason()}", file=sys.stderr)
        return 1
    if origin == "package":
        print(f"envconv: C++ CPU envelope kernel ready: {_PACKAGE / LIBRARY} (built with the package)")
    else:
        print(f"envconv: C++ CPU envelope kernel ready: {build_directory(f'envconv_envelope_cpu_{build_tag()}')} "
              f"(compiled on first use)")
    return 0
