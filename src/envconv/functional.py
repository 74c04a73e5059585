r"""The envelope's functional API, as :mod:`torch.nn.functional` is to ``nn.Conv2d``.

:func:`gaussian_envelope` is eq. (3) with the kernel of eq. (9); :func:`envelope_conv2d` is an
envelope followed by a convolution (eqs. (3)-(4)) that recomputes the envelope in backward.
Both check their arguments, then call the ``torch.ops.envconv`` operators of
:mod:`envconv.ops`, which the compiler, ``torch.export`` and ``FlopCounterMode`` see as single
ops. Under autocast they return the dtype ``F.conv2d`` would (the ops carry autocast kernels);
under ``torch.fx.symbolic_trace`` each call is recorded as one node (:func:`torch.fx.wrap`), so
its checks run when the traced module runs. The kernel math itself is in :mod:`envconv.kernels`.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.fx

from . import kernels
from .ops import autograd
from .ops.composite import CONV
from .ops.dispatch import check_impl
from .ops.export import envelope_decomposed  # importing envconv.ops registers the torch.ops.envconv operators
from .ops.library import size_args

__all__ = ["gaussian_envelope", "envelope_conv2d", "envelope_conv", "PADDING_MODES", "INPUT_SHAPES"]

#: The envelope's padding modes (:data:`envconv.kernels.PADDING_MODES`).
PADDING_MODES = kernels.PADDING_MODES


def _pair(value: Union[int, Sequence[int]], name: str, n: int = 2) -> List[int]:
    pair = [value] * n if isinstance(value, int) else list(value)
    if len(pair) != n or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
        what = "a pair" if n == 2 else f"{n}" if n > 1 else "one"
        raise ValueError(f"{name} must be a positive int or {what} of them, got {value!r}")
    return pair


def _padding(value: Union[int, Sequence[int]], dims: int) -> List[int]:
    """The convolution's zero padding as ``dims`` non-negative ints ("same" / "valid" belong to the layers)."""
    pads = [value] * dims if isinstance(value, int) else list(value) if not isinstance(value, str) else None
    if pads is None or len(pads) != dims or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0
                                                    for p in pads):
        raise ValueError(f"padding must be a non-negative int or {dims} of them, got {value!r} (for 'same' or "
                         f"'valid' use the layer, e.g. DisentangledConv2d(..., padding='same'))")
    return pads


#: The input shapes an envelope (and an envelope convolution) takes, by number of spatial dimensions.
INPUT_SHAPES = {1: "(N, C, L) or (C, L)", 2: "(N, C, H, W) or (C, H, W)", 3: "(N, C, D, H, W) or (C, D, H, W)"}


def _check_input(x: torch.Tensor, channels: Optional[int] = None, spatial_dims: int = 2) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if spatial_dims not in INPUT_SHAPES:
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
    if x.dim() not in (spatial_dims + 1, spatial_dims + 2):
        raise ValueError(f"x must have shape {INPUT_SHAPES[spatial_dims]}, got {x.dim()} dims {tuple(x.shape)}")
    c = x.shape[-spatial_dims - 1]
    if channels is not None and c != channels:
        raise ValueError(f"the envelope has {channels} channels but the input has {c} (shape {tuple(x.shape)})")


def gaussian_envelope(
    x: torch.Tensor,
    raw_sigma: torch.Tensor,
    size: Union[int, Sequence[int]],
    padding_mode: str = "zeros",
    stride: Union[int, Sequence[int]] = 1,
    impl: str = "auto",
    *,
    channels: Optional[int] = None,
    spatial_dims: int = 2,
) -> torch.Tensor:
    r"""Channel-wise Gaussian envelope filtering, eq. (3) with the kernel of eq. (9).

    Smooths each channel ``c`` of ``x`` with the separable Gaussian of scale
    :math:`\sigma_c`: the 1-D kernel along each spatial axis in turn. The spatial size is kept
    (``stride=1``), or the result is computed only every ``stride`` pixels, as a strided 1x1
    convolution after it reads it. Gradients: eq. (7) for ``x`` and eq. (8) for ``raw_sigma``.

    Args:
        x: input of shape :math:`(N, C, H, W)` or :math:`(C, H, W)`, NCHW or channels_last
            (the output keeps it); with ``spatial_dims=1`` :math:`(N, C, L)` or :math:`(C, L)`,
            with ``spatial_dims=3`` :math:`(N, C, D, H, W)` or :math:`(C, D, H, W)`.
        raw_sigma: raw scale :math:`\tilde\sigma`, shape :math:`(C,)`, or :math:`(1,)`
            for one sigma shared by all channels; :math:`(C, n)` or :math:`(1, n)` for a sigma
            per spatial axis (``n`` axes, in the input's order: in 3-D depth, height, width).
        size: envelope size :math:`k_g = 2r + 1` (odd, positive), or one per spatial axis (in
            the input's order, e.g. ``(3, 9, 9)`` for a clip's time, height and width).
        padding_mode: one of :data:`envconv.kernels.PADDING_MODES`. ``"reflect"`` needs
            :math:`r < \min(H, W)`, ``"circular"`` :math:`r \le \min(H, W)` (each axis's own r).
        stride: output every ``stride`` pixels (an int, or one per spatial axis: (sh, sw) in 2-D).
        impl: ``"auto"`` (:mod:`envconv.ops.dispatch` decides) or one of
            :data:`~envconv.ops.dispatch.IMPLS` to force one (``"full"`` is for 2-D maps only).
        channels: the number of channels ``x`` must have (what a shared sigma cannot tell).
        spatial_dims: 1, 2 (default) or 3: the number of spatial axes of ``x``.

    Returns:
        Tensor of shape :math:`(N, C, \lceil H / s_h \rceil, \lceil W / s_w \rceil)`
        (without :math:`N` for an unbatched input; in 1-D and 3-D likewise per axis).

    Raises:
        TypeError: ``x`` is not a tensor, or a size is not an int.
        ValueError: a shape, size, padding mode, stride or ``impl`` it cannot take, naming it.

    Example:
        >>> x = torch.randn(2, 3, 16, 16)
        >>> gaussian_envelope(x, torch.zeros(3), 9).shape
        torch.Size([2, 3, 16, 16])
        >>> y = gaussian_envelope(x, torch.zeros(3), 9, stride=2)
        >>> bool(torch.allclose(y, gaussian_envelope(x, torch.zeros(3), 9)[..., ::2, ::2], atol=1e-6))
        True
        >>> gaussian_envelope(torch.randn(2, 3, 4, 16, 16), torch.zeros(3), 5, stride=2, spatial_dims=3).shape
        torch.Size([2, 3, 2, 8, 8])
        >>> per_axis = torch.zeros(3, 2)  # a sigma per channel and axis (height, width); here both equal
        >>> bool(torch.allclose(gaussian_envelope(x, per_axis, 9), gaussian_envelope(x, torch.zeros(3), 9), atol=1e-6))
        True
        >>> rows = gaussian_envelope(x, torch.zeros(3), (1, 9))  # a size per axis: 1 tap (none) along the height
        >>> columns = gaussian_envelope(x.transpose(2, 3), torch.zeros(3), (9, 1)).transpose(2, 3)
        >>> bool(torch.allclose(rows, columns, atol=1e-6))
        True
    """
    _check_input(x, channels, spatial_dims)
    if x.dim() == spatial_dims + 1:
        return gaussian_envelope(x.unsqueeze(0), raw_sigma, size, padding_mode, stride, impl,
                                 spatial_dims=spatial_dims).squeeze(0)
    kernels.check_envelope_args(x, raw_sigma, size, padding_mode)
    stride = _pair(stride, "stride", spatial_dims)
    check_impl(impl)
    if torch.onnx.is_in_onnx_export():
        return envelope_decomposed(x, raw_sigma, size, stride, padding_mode)
    k, *axis_sizes = _size_args(size, spatial_dims)
    return autograd.apply("envelope", x, raw_sigma, k, stride, padding_mode, impl, *axis_sizes)


def envelope_conv2d(
    x: torch.Tensor,
    raw_sigma: torch.Tensor,
    size: Union[int, Sequence[int]],
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

    The 2-D spelling of :func:`envelope_conv` (the ``envconv::envelope_conv`` op).

    Only ``x`` is kept for backward, where the envelope is recomputed: two fewer feature
    maps alive per layer in training. The convolution pads with zeros.

    Args:
        x: input :math:`(N, C, H, W)` or :math:`(C, H, W)`.
        raw_sigma: the envelope's raw scale, as in :func:`gaussian_envelope`.
        size: the envelope's :math:`k_g` (or one per spatial axis).
        weight: the convolution's weight :math:`(D, C / \text{groups}, k_h, k_w)`.
        bias: the convolution's bias :math:`(D,)` or ``None``.
        env_stride: the envelope's output stride (for a strided 1x1 convolution that reads
            every ``stride``-th pixel).
        padding_mode: the envelope's padding (the convolution pads with zeros).
        stride: the convolution's stride, as in :func:`torch.nn.functional.conv2d`.
        padding: the convolution's zero padding, an int or a pair.
        dilation: the convolution's dilation.
        groups: the convolution's groups.
        impl: the envelope's implementation, as in :func:`gaussian_envelope`.

    Example:
        >>> x, w = torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3)
        >>> y = envelope_conv2d(x, torch.zeros(4), 5, w, padding=1)
        >>> want = torch.nn.functional.conv2d(gaussian_envelope(x, torch.zeros(4), 5), w, padding=1)
        >>> bool(torch.allclose(y, want, atol=1e-5))
        True
    """
    return _envelope_conv(2, x, raw_sigma, size, weight, bias, env_stride, padding_mode, stride, padding, dilation,
                          groups, impl)


def envelope_conv(
    x: torch.Tensor,
    raw_sigma: torch.Tensor,
    size: Union[int, Sequence[int]],
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
    r""":func:`envelope_conv2d` in 1, 2 or 3 spatial dims (``conv1d`` / ``conv2d`` / ``conv3d``), one op.

    The dimensionality is the weight's: :math:`(D, C / \text{groups}, k_1, \ldots, k_n)` for
    ``x`` :math:`(N, C, *\text{spatial})` (or without ``N``) with n spatial axes. The arguments are as in
    :func:`envelope_conv2d`, each an int or n of them; ``raw_sigma`` may have a column per axis.

    Example:
        >>> x, w = torch.randn(2, 3, 4, 8, 8), torch.randn(6, 3, 3, 3, 3)
        >>> y = envelope_conv(x, torch.zeros(3, 3), 5, w, padding=1, stride=2)
        >>> smoothed = gaussian_envelope(x, torch.zeros(3), 5, spatial_dims=3)
        >>> bool(torch.allclose(y, torch.nn.functional.conv3d(smoothed, w, padding=1, stride=2), atol=1e-5))
        True
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() not in (3, 4, 5):
        raise ValueError(f"weight must be a (D, C / groups, *kernel) tensor with 1-3 spatial dims, got "
                         f"{getattr(weight, 'shape', type(weight).__name__)}")
    return _envelope_conv(weight.dim() - 2, x, raw_sigma, size, weight, bias, env_stride, padding_mode, stride,
                          padding, dilation, groups, impl)


def _envelope_conv(dims: int, x, raw_sigma, size, weight, bias, env_stride, padding_mode, stride, padding,
                   dilation, groups, impl) -> torch.Tensor:
    """The argument checks and the call of the envelope + conv op for ``x`` with ``dims`` spatial axes."""
    _check_input(x, None, dims)
    if x.dim() == dims + 1:
        return _envelope_conv(dims, x.unsqueeze(0), raw_sigma, size, weight, bias, env_stride, padding_mode,
                              stride, padding, dilation, groups, impl).squeeze(0)
    kernels.check_envelope_args(x, raw_sigma, size, padding_mode)
    check_impl(impl)
    env_stride = _pair(env_stride, "env_stride", dims)
    padding = _padding(padding, dims)
    stride, dilation = _pair(stride, "stride", dims), _pair(dilation, "dilation", dims)
    if torch.onnx.is_in_onnx_export():
        smoothed = envelope_decomposed(x, raw_sigma, size, env_stride, padding_mode)
        return CONV[x.dim()](smoothed, weight, bias, stride, padding, dilation, groups)
    k, *axis_sizes = _size_args(size, dims)
    return autograd.apply("envelope_conv", x, raw_sigma, weight, bias, k, env_stride, padding_mode, impl, stride,
                          padding, dilation, groups, *axis_sizes)


def _size_args(size, dims: int) -> tuple:
    """The ops' size arguments: ``(size,)``, or ``(largest size, sizes per axis)`` when the axes' sizes differ."""
    k, axis_sizes = size_args(size, dims)
    return (k,) if axis_sizes is None else (k, axis_sizes)


# torch.fx.symbolic_trace records these as leaf calls: their checks look at real shapes when the
# traced module runs, not at proxies (modules call them as ``functional.<name>``, which the tracer patches).
torch.fx.wrap("gaussian_envelope")
torch.fx.wrap("envelope_conv2d")
torch.fx.wrap("envelope_conv")
