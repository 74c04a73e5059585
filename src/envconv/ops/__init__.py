r"""The envelope as PyTorch operators, and the functional API over them.

:func:`gaussian_envelope` is the functional form of eq. (3); :func:`envelope_conv2d` is an
envelope followed by a convolution (eq. (3)-(4)) that recomputes the envelope in backward.
Both call the ``torch.ops.envconv`` operators of :mod:`envconv.ops.library`, which the
compiler, ``torch.export`` and ``FlopCounterMode`` see as single ops; :mod:`envconv.ops.dispatch`
decides which kernel (C++ on CPU, Triton on CUDA, composite ATen elsewhere) computes them.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch

from .. import functional as EF
from . import library
from .dispatch import IMPLS, backward_impl, forward_impl
from .library import envelope_flops

__all__ = ["IMPLS", "gaussian_envelope", "envelope_conv2d", "envelope_flops", "forward_impl", "backward_impl",
           "fx_tracing"]


def fx_tracing() -> bool:
    """Whether ``torch.fx.symbolic_trace`` is tracing.

    Shapes are proxies then, so checks on them are skipped (the op is recorded as one node;
    shapes are checked when the traced module runs).
    """
    symbolic = getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", None)  # torch >= 2.6
    return symbolic() if symbolic is not None else torch.fx._symbolic_trace.is_fx_tracing()


def _pair(value: Union[int, Sequence[int]], name: str) -> List[int]:
    pair = [value, value] if isinstance(value, int) else list(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return pair


def _exporting_onnx() -> bool:
    return bool(torch.onnx.is_in_onnx_export())


def gaussian_envelope(
    x: torch.Tensor,
    raw_sigma: torch.Tensor,
    size: int,
    padding_mode: str = "zeros",
    stride: Union[int, Sequence[int]] = 1,
    impl: str = "auto",
) -> torch.Tensor:
    r"""Channel-wise Gaussian envelope filtering, eq. (3) with the kernel of eq. (9).

    Smooths each channel ``c`` of ``x`` with the separable Gaussian of scale
    :math:`\sigma_c`. The spatial size is kept (``stride=1``), or the result is computed
    only every ``stride`` pixels, as a strided 1x1 convolution after it reads it.
    Gradients: eq. (7) for ``x`` and eq. (8) for ``raw_sigma``.

    Args:
        x: input of shape :math:`(N, C, H, W)`, NCHW or channels_last (the output keeps it).
        raw_sigma: raw scale :math:`\tilde\sigma`, shape :math:`(C,)`, or :math:`(1,)`
            for one sigma shared by all channels.
        size: envelope size :math:`k_g = 2r + 1` (odd, positive).
        padding_mode: one of :data:`envconv.functional.PADDING_MODES`. ``"reflect"`` needs
            :math:`r < \min(H, W)`, ``"circular"`` :math:`r \le \min(H, W)`.
        stride: output every ``stride`` pixels (int or (sh, sw)).
        impl: ``"auto"`` (:mod:`envconv.ops.dispatch` decides) or one of :data:`~envconv.ops.dispatch.IMPLS`
            to force one.

    Returns:
        Tensor of shape :math:`(N, C, \lceil H / s_h \rceil, \lceil W / s_w \rceil)`.

    Example:
        >>> x = torch.randn(2, 3, 16, 16)
        >>> gaussian_envelope(x, torch.zeros(3), 9).shape
        torch.Size([2, 3, 16, 16])
        >>> y = gaussian_envelope(x, torch.zeros(3), 9, stride=2)
        >>> bool(torch.allclose(y, gaussian_envelope(x, torch.zeros(3), 9)[..., ::2, ::2], atol=1e-6))
        True
    """
    if not fx_tracing():
        EF.check_envelope_args(x, raw_sigma, size, padding_mode)
    stride = _pair(stride, "stride")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if _exporting_onnx():
        return library.envelope_decomposed(x, raw_sigma, size, stride, padding_mode)
    return torch.ops.envconv.envelope(x, raw_sigma, size, stride, padding_mode, impl)


def envelope_conv2d(
    x: torch.Tensor,
    raw_sigma: torch.Tensor,
    size: int,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    env_stride: Union[int, Sequence[int]] = 1,
    padding_mode: str = "zeros",
    stride: Union[int, Sequence[int]] = 1,
    padding: Union[int, Sequence[int]] = 0,
    dilation: Union[int, Sequence[int]] = 1,
    groups: int = 1,
    impl: str = "auto",
) -> torch.Tensor:
    r"""``conv2d(gaussian_envelope(x, raw_sigma, size, padding_mode, env_stride), weight, bias, ...)`` in one op.

    Only ``x`` is kept for backward, where the envelope is recomputed: two fewer feature
    maps alive per layer in training. The convolution pads with zeros.

    Example:
        >>> x, w = torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3)
        >>> y = envelope_conv2d(x, torch.zeros(4), 5, w, padding=1)
        >>> want = torch.nn.functional.conv2d(gaussian_envelope(x, torch.zeros(4), 5), w, padding=1)
        >>> bool(torch.allclose(y, want, atol=1e-5))
        True
    """
    if not fx_tracing():
        EF.check_envelope_args(x, raw_sigma, size, padding_mode)
    env_stride = _pair(env_stride, "env_stride")
    padding = [padding, padding] if isinstance(padding, int) else list(padding)
    if _exporting_onnx():
        smoothed = library.envelope_decomposed(x, raw_sigma, size, env_stride, padding_mode)
        return torch.nn.functional.conv2d(smoothed, weight, bias, stride, padding, dilation, groups)
    return torch.ops.envconv.envelope_conv2d(x, raw_sigma, weight, bias, size, env_stride, padding_mode, impl,
                                             _pair(stride, "stride"), padding, _pair(dilation, "dilation"), groups)
