"""A fused C++ kernel for the envelope on CPU tensors, channels_last inside (built on first use).

``csrc/envelope_cpu.cpp`` computes the two 1-D passes with loops that vectorise over
the contiguous channels, and a backward that takes the sigma gradient from the paper's
eq. (8) - one derivative-of-Gaussian pass per axis and a dot product - instead of the
generic depth-wise weight gradient. It is compiled with the system's C++ compiler by
:func:`torch.utils.cpp_extension.load` the first time it is needed (about half a
minute, then cached in torch's extension directory); nothing is downloaded. If the build fails,
or ``ENVCONV_NO_EXTENSION=1`` is set, envconv warns once and uses the PyTorch ops.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from . import functional as EF

__all__ = ["available", "load", "fused_envelope", "supports", "forward", "backward"]

_SOURCE = Path(__file__).parent / "csrc" / "envelope_cpu.cpp"
_module = None
_failed: Optional[str] = None


def _cpu_tag() -> str:
    """A short hash of this CPU's instruction-set flags: the build uses -march=native, so a
    build cached for another CPU (a shared home directory) must never be loaded here."""
    flags = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags += line
                break
    except OSError:
        pass
    return hashlib.sha1(flags.encode()).hexdigest()[:10]


def load():
    """The compiled module, building it if needed; ``None`` if it cannot be built."""
    global _module, _failed
    if _module is not None or _failed is not None:
        return _module
    if os.environ.get("ENVCONV_NO_EXTENSION", "") not in ("", "0"):
        _failed = "disabled by ENVCONV_NO_EXTENSION"
        return None
    try:
        # torch's build helpers warn (and log) about CUDA and TorchScript here: not our concern
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.utils.cpp_extension import load as load_extension

            _module = load_extension(name=f"envconv_envelope_cpu_{_cpu_tag()}", sources=[str(_SOURCE)],
                                     extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
                                     verbose=False)
    except Exception as err:  # a missing compiler, headers or OpenMP: fall back to the PyTorch ops
        _failed = f"{type(err).__name__}: {err}"
        warnings.warn(f"envconv: the fused CPU envelope kernel could not be built ({_failed}); "
                      f"using PyTorch ops instead", RuntimeWarning, stacklevel=2)
    return _module


def available() -> bool:
    """Whether the fused kernel is built (or can be)."""
    return load() is not None


def supports(x: torch.Tensor, padding_mode: str) -> bool:
    """Cases the fused kernel handles: 4-D float32/float64 CPU tensors, zero padding, no autocast.

    The kernel works on channels_last memory; other inputs are converted on the way in and
    the results converted back.
    """
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.dim() == 4
            and padding_mode == "zeros" and not _autocast_enabled())


def _autocast_enabled() -> bool:
    """Under CPU autocast the conv paths run in bfloat16/float16, as autocast asks; the kernel would not."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last)


def _as_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def _stride(stride: Union[int, Sequence[int]]):
    return (stride, stride) if isinstance(stride, int) else tuple(stride)


def forward(x: torch.Tensor, raw_sigma: torch.Tensor, size: int, stride=1) -> torch.Tensor:
    """The envelope by the fused kernel, without autograd."""
    with torch.no_grad():
        kernel = EF.channel_kernel(raw_sigma, size, x)
        y = load().forward(_as_channels_last(x), kernel.t().contiguous(), *_stride(stride))
        return y if _is_channels_last(x) else y.contiguous()


def backward(grad_out: torch.Tensor, x: torch.Tensor, raw_sigma: torch.Tensor, size: int, stride=1,
             need_x: bool = True, need_raw: bool = True):
    """(grad_x or None, grad_raw or None) of the envelope, by the fused kernel."""
    with torch.no_grad():
        kernel = EF.gaussian_kernel1d(raw_sigma, size)
        dkernel = EF.gaussian_kernel1d_derivative(raw_sigma, size)
        channels = x.shape[1]
        kernel = kernel.to(x.dtype).expand(channels, size).t().contiguous()
        dkernel = dkernel.to(x.dtype).expand(channels, size).t().contiguous()
        grad_x, grad_raw = load().backward(grad_out.to(x.dtype), _as_channels_last(x), kernel, dkernel,
                                           *_stride(stride), need_x)
        if need_x and not _is_channels_last(x):
            grad_x = grad_x.contiguous()
    if raw_sigma.shape[0] != channels:  # one shared sigma
        grad_raw = grad_raw.sum().reshape(1)
    return (grad_x if need_x else None), (grad_raw.to(raw_sigma.dtype) if need_raw else None)


class _FusedEnvelope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, raw_sigma, size, stride):
        ctx.save_for_backward(x, raw_sigma)
        ctx.config = (size, stride)
        return forward(x, raw_sigma, size, stride)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, raw_sigma = ctx.saved_tensors
        grad_x, grad_raw = backward(grad_out, x, raw_sigma, *ctx.config, *ctx.needs_input_grad[:2])
        return grad_x, grad_raw, None, None


def fused_envelope(x: torch.Tensor, raw_sigma: torch.Tensor, size: int,
                   stride: Union[int, Sequence[int]] = 1) -> torch.Tensor:
    """:func:`envconv.functional.gaussian_envelope` by the fused kernel (zero padding, float32/64 CPU)."""
    stride = _stride(stride)
    if not supports(x, "zeros"):
        raise ValueError("fused_envelope needs a 4-D float32/float64 CPU tensor")
    if load() is None:
        raise RuntimeError(f"the fused CPU kernel is not available: {_failed}")
    return _FusedEnvelope.apply(x, raw_sigma, size, stride)
