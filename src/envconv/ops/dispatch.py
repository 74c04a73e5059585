"""The one place that decides which kernel computes an envelope.

Implementations (:data:`IMPLS`):

* ``"cpp"`` - the C++ CPU kernels (:mod:`envconv.ops.cpu`): float32/float64, zero padding (the
  benchmark tables before 2026-12-06 call it ``"fused"``);
* ``"triton"`` - the Triton kernels (:mod:`envconv.ops.triton_kernels`): CUDA tensors (CPU
  tensors only under ``TRITON_INTERPRET=1``, which is how they are tested), zero padding;
* ``"separable"`` / ``"full"`` - the composite ATen implementation (:mod:`envconv.ops.composite`),
  a 1-D pass per spatial axis or (2-D only) one ``k x k`` depth-wise conv in forward; every device,
  dtype and padding mode.

Every implementation but ``"full"`` takes 1-D, 2-D and 3-D maps, with one sigma per channel or
one per channel and axis.

``"auto"`` picks by measurement:

* CPU, 2-D maps with one sigma per channel and 16 or more channels (``benchmarks/layer_speed.py``,
  oneDNN; :func:`ring_loop_applies`): forward
  ``"full"`` for 3 taps, ``"cpp"`` on other channels_last input, else the composite forward
  (``"full"`` for maps of at most 28 x 28, ``"separable"`` otherwise); backward ``"cpp"`` in
  both layouts (0.18x-0.88x the time of autograd through the 1-D passes at ResNet-50's seven places).
* CPU, 1-D and 3-D maps, 2-D stems and a sigma or a size per axis: ``"cpp"`` where the kernel table of
  ``benchmarks/nd_speed.py`` measured it faster (``_pass_per_axis_wins``: the backward at
  stride 1 and, strided, on channels_last maps of 16 or more channels and on contiguous stems;
  the forward of stems and sequences), the composite passes otherwise (2-D per-axis maps with
  3 taps: ``"full"``).
* CUDA: the composite path; the Triton kernels run only when forced (``impl="triton"``) until
  ``benchmarks/gpu.py`` has measured them on a GPU and a rule written from that measurement
  joins the CPU rules here.

A forced implementation that cannot handle the case raises a ``ValueError`` (or a
``RuntimeError`` when its kernel is unavailable) naming why, instead of computing something else.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import torch

from . import cpu
from .layout import is_channels_last

__all__ = ["IMPLS", "STEM_CHANNELS", "forward_impl", "backward_impl", "ring_loop_applies", "stem_backward_applies",
           "triton_unsupported"]

#: The implementations an envelope can be forced to (``impl=``); ``"auto"`` lets this module choose.
IMPLS = ("auto", "separable", "full", "cpp", "triton")


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def triton_unsupported(x: torch.Tensor, padding_mode: str) -> Optional[str]:
    """``None`` if the Triton kernels handle ``x``, else the reason they do not."""
    interpret = os.environ.get("TRITON_INTERPRET", "") not in ("", "0")
    if x.dim() not in (3, 4, 5):
        return f"they filter maps with 1-3 spatial dims, got {x.dim() - 2}"
    if x.device.type != "cuda" and not (interpret and x.device.type == "cpu"):
        return f"they run on CUDA tensors (CPU tensors only with TRITON_INTERPRET=1), got a {x.device.type} tensor"
    if padding_mode != "zeros":
        return f"they pad with zeros, got padding_mode={padding_mode!r}"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    return None


def _forced(x: torch.Tensor, padding_mode: str, impl: str) -> str:
    if impl == "cpp":
        reason = cpu.supports(x, padding_mode)
        if reason is not None:
            raise ValueError(f"impl='cpp' (the C++ CPU kernel) cannot compute this envelope: {reason}")
        if not cpu.available():
            raise RuntimeError(f"impl='cpp': the C++ CPU kernel is not available ({cpu.unavailable_reason()})")
    elif impl == "triton":
        reason = triton_unsupported(x, padding_mode)
        if reason is not None:
            raise ValueError(f"impl='triton' cannot compute this envelope: {reason}")
    elif impl == "full" and x.dim() != 4:
        raise ValueError(f"impl='full' (one k x k depth-wise conv) is for 2-D maps, got {x.dim() - 2} spatial dims; "
                         f"use 'separable'")
    return impl


def _composite_forward(x: torch.Tensor, size: int) -> str:
    if x.dim() != 4:  # 1-D and 3-D: a pass per axis
        return "separable"
    return "full" if size <= 3 or x.shape[2] * x.shape[3] <= 28 * 28 else "separable"


def _cpp_ok(x: torch.Tensor, padding_mode: str) -> bool:
    return cpu.supports(x, padding_mode) is None and cpu.available()


def _pass_per_axis_wins(x: torch.Tensor, stride: Sequence[int], backward: bool) -> bool:
    """Whether the C++ pass-per-axis kernel (1-D, 3-D, a sigma per axis) beats the composite one on CPU.

    The rule follows the kernel table of ``benchmarks/nd_speed.py`` (cpp / composite time, 2
    cores, k_g = 9; ``benchmarks/results/2026-12-04-amd-epyc-2t-nd.md``):

    * forward + backward at stride 1: 0.15-0.94x at every place, layout and dimensionality;
    * strided: 0.38-0.84x on channels_last maps of 16 or more channels and 0.48-1.01x on
      contiguous stems (fewer than 16 channels); 1.2-2.0x on the others;
    * forward alone: 0.25-0.67x on stems (not strided channels_last ones: 1.8-2.1x), 0.60-0.84x
      on sequences at stride 1 or with few channels; elsewhere 0.67-1.4x, no clear gain.
    """
    if x.device.type != "cpu":
        return False
    few, unit = x.shape[1] < 16, all(s == 1 for s in stride)
    if not backward:
        if x.dim() == 3:  # sequences
            return unit or few
        return few and (unit or not is_channels_last(x))
    if unit:
        return True
    return not few if is_channels_last(x) else few


def ring_loop_applies(x: torch.Tensor, per_axis: bool) -> bool:
    """Whether the C++ kernel runs its 2-D ring loop for ``x`` (else its pass-per-axis loop).

    2-D maps with one sigma per channel and at least 16 channels: there the ring loop took
    0.24-0.91x the pass-per-axis loop's forward + backward time on channels_last maps at
    ResNet-50's places (``benchmarks/results/2026-12-06-amd-epyc-2t-cpp-families.md``). With
    fewer channels (stems) the pass-per-axis loop serves, as it does for 1-D and 3-D stems.
    """
    return x.dim() == 4 and not per_axis and x.shape[1] >= 16


def forward_impl(x: torch.Tensor, size: int, stride: Sequence[int], padding_mode: str, impl: str = "auto",
                 per_axis: bool = False) -> str:
    """The implementation that computes the envelope's forward for ``x``.

    ``per_axis``: a kernel per axis (a sigma or a size per axis), not one for every axis.
    """
    if check_impl(impl) != "auto":
        return _forced(x, padding_mode, impl)
    if size <= 3 and x.dim() == 4:  # one 3x3 depth-wise conv beats two 1-D passes and the C++ kernel
        return "full"
    if not _cpp_ok(x, padding_mode) or x.device.type != "cpu":
        return _composite_forward(x, size)
    if ring_loop_applies(x, per_axis):
        return "cpp" if is_channels_last(x) else _composite_forward(x, size)
    return "cpp" if _pass_per_axis_wins(x, stride, backward=False) else _composite_forward(x, size)


#: An envelope + conv with at most this many input channels, whose input needs no gradient (a stem
#: on the image), gets its sigma gradient from the convolution's weight gradient instead of the
#: convolution's input gradient (``envconv.ops.autograd._stem_backward`` says why: oneDNN's
#: backward-data pass at a ResNet stem). The value 4 is not a measured threshold: it admits RGB(A).
STEM_CHANNELS = 4


def stem_backward_applies(x: torch.Tensor, size: int, env_stride: Sequence[int], padding_mode: str,
                          groups: int) -> bool:
    """Whether an envelope + conv backward that needs the sigma gradient but not the input's takes the stem route.

    It needs zero padding, an unstrided envelope, an ungrouped convolution, a real envelope
    (``size > 1``), a non-empty input and at most :data:`STEM_CHANNELS` input channels.
    """
    return (groups == 1 and all(s == 1 for s in env_stride) and padding_mode == "zeros" and size > 1
            and 0 < x.numel() and x.shape[1] <= STEM_CHANNELS)


def backward_impl(x: torch.Tensor, size: int, stride: Sequence[int], padding_mode: str, impl: str = "auto",
                  per_axis: bool = False) -> str:
    """The implementation that computes the envelope's backward (eq. (7) and (8)) for ``x``.

    Every backward computes the sigma gradient by eq. (8); ``"separable"`` and ``"full"``
    name the same composite backward.
    """
    if check_impl(impl) != "auto":
        return _forced(x, padding_mode, impl)
    if x.device.type != "cpu" or not _cpp_ok(x, padding_mode):
        return "separable"
    if ring_loop_applies(x, per_axis) or _pass_per_axis_wins(x, stride, backward=True):
        return "cpp"
    return "separable"
