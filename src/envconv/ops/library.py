r"""The envelope as PyTorch operators: ``torch.ops.envconv.*``.

Four ops, registered with :func:`torch.library.custom_op`, each with a fake (meta) kernel for
the compiler and export, and a FLOP formula for :class:`torch.utils.flop_counter.FlopCounterMode`:

* ``envconv::envelope(x, raw_sigma, size, stride, padding_mode, impl, axis_sizes=None) -> y`` - eq. (3)
  with the kernel of eq. (9), evaluated every ``stride`` pixels; its backward is the next op.
  ``raw_sigma`` is (C,) or (1,) - a sigma per channel, or one for all - or (C, n) / (1, n): a
  sigma per channel and spatial axis (n of them), each axis filtered with its own. ``size`` is
  :math:`k_g` on every axis; ``axis_sizes`` (one per spatial axis, ``size`` their largest) gives
  each axis its own.
* ``envconv::envelope_backward(grad, x, raw_sigma, ...) -> (grad_x, grad_raw_sigma)`` - eq. (7)
  and the eq. (8) sigma gradient (an empty tensor for a gradient not asked for); differentiable
  too (double backward, for gradient penalties).
* ``envconv::envelope_conv2d(x, raw_sigma, weight, bias, ...) -> y`` - the envelope followed by
  a convolution (eq. (3)-(4)), saving only ``x`` for backward: the envelope is recomputed there
  (one cheap forward) instead of keeping two extra feature maps per layer alive;
  ``envconv::envelope_conv`` is the same for 1-D, 2-D and 3-D maps (``conv1d`` / ``conv3d``).

Their autograd (backward, double backward, forward AD, ``torch.func``) is registered in
:mod:`envconv.ops.autograd`. Which kernel computes an op is decided in :mod:`envconv.ops.dispatch`
alone; ``impl`` forces one.
Every implementation returns the input's memory format (channels_last in, channels_last out).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

from .. import kernels as EF
from . import composite, cpu, dispatch
from .composite import _CONV  # the depth-wise passes' convolution per input rank: conv1d / conv2d / conv3d
from .layout import empty_like_layout, memory_format

__all__ = ["envelope", "envelope_backward", "envelope_conv2d", "envelope_conv", "envelope_decomposed", "envelope_flops",
           "separable_macs", "size_args", "STEM_CHANNELS"]

#: An envelope + conv with at most this many input channels, whose input needs no gradient (a
#: stem on the image), gets its sigma gradient from forward convolutions (:func:`_stem_backward`).
STEM_CHANNELS = 4


def _out_size(x: Tensor, stride: List[int]):
    return tuple((n - 1) // s + 1 for n, s in zip(x.shape[2:], stride))


def _strided(x: Tensor, stride: List[int]) -> Tensor:
    """``x`` at every ``stride``-th position of each spatial axis (a view)."""
    return x[(..., *(slice(None, None, s) for s in stride))]


def _sizes_of(size: int, axis_sizes: Optional[List[int]], dims: int) -> List[int]:
    """The envelope size of each of ``dims`` spatial axes from an op's ``size`` and ``axis_sizes``."""
    return [size] * dims if axis_sizes is None else list(axis_sizes)


def size_args(sizes, dims: int) -> Tuple[int, Optional[List[int]]]:
    """An op's ``(size, axis_sizes)`` for sizes given as an int or one per axis (``None``: the same on every axis)."""
    sizes = EF.axis_sizes(sizes, dims)
    return max(sizes), (None if len(set(sizes)) == 1 else list(sizes))


def _axis_kernels(kernel_fn, raw_sigma: Tensor, size, x: Tensor) -> List[Tensor]:
    """``kernel_fn``'s 1-D kernel (C, k) for each spatial axis of ``x`` (``size``: an int or one per axis).

    One sigma and one size for every axis: one tensor for every axis; else each axis's own.
    """
    channels, dims = x.shape[1], x.dim() - 2
    sizes = EF.axis_sizes(size, dims)
    if raw_sigma.dim() == 1 and len(set(sizes)) == 1:
        return [kernel_fn(raw_sigma, sizes[0]).expand(channels, sizes[0])] * dims
    return [kernel_fn(raw, k).expand(channels, k) for raw, k in zip(EF.axis_raw_sigmas(raw_sigma, dims), sizes)]


def _one_kernel(raw_sigma: Tensor, sizes: List[int]) -> bool:
    """Whether every axis filters with the same kernel: one sigma per channel and one size."""
    return raw_sigma.dim() == 1 and len(set(sizes)) == 1


def _kernels(raw_sigma: Tensor, size, x: Tensor, derivative: bool = False):
    """(kernels, d kernels / d raw) of eq. (9) per spatial axis of ``x``, each (C, k), in ``raw_sigma``'s dtype."""
    kernels = _axis_kernels(EF.gaussian_kernel1d, raw_sigma, size, x)
    if not derivative:
        return kernels, None
    return kernels, _axis_kernels(EF.gaussian_kernel1d_derivative, raw_sigma, size, x)


def _reduce_sigma_grad(grad_c: Tensor, raw_sigma: Tensor) -> Tensor:
    """A per-channel (C,) or per-channel-and-axis (C, n) sigma gradient summed to ``raw_sigma``'s shape."""
    if grad_c.dim() == 2 and raw_sigma.dim() == 1:  # one sigma, a size per axis: the kernels took a column each
        grad_c = grad_c.sum(1)
    if raw_sigma.shape[0] != grad_c.shape[0]:  # one sigma (per axis) shared by all channels
        grad_c = grad_c.sum(0, keepdim=True)
    return grad_c.to(raw_sigma.dtype)


def _no_autocast(x: Tensor):
    """Ops compute in their inputs' dtype: autocast (still on inside an op's kernel) must not recast them."""
    return torch.autocast(x.device.type, enabled=False)


def _for_kernel(kernels: List[Tensor], one: bool):
    """What the fused kernels take: one (C, k) kernel for all axes (``one``), or the list of them."""
    return kernels[0] if one else kernels


def _run_kernel(x: Tensor, one: bool, kernels: List[Tensor], stride: List[int], padding_mode: str,
                which: str) -> Tensor:
    if which == "fused":
        return cpu.forward(x, _for_kernel(kernels, one), stride)
    if which == "triton":
        from . import triton_kernels

        return triton_kernels.forward(x, _for_kernel(kernels, one), stride)
    out = composite.forward(x, [k.to(x.dtype) for k in kernels], stride, padding_mode, which)
    return out.contiguous(memory_format=memory_format(x))


def _forward(x: Tensor, raw_sigma: Tensor, size: int, stride: List[int], padding_mode: str, impl: str,
             axis_sizes: Optional[List[int]] = None) -> Tensor:
    _check_args(x, raw_sigma, size, stride, axis_sizes)  # the same errors as under the compiler and export
    if x.numel() == 0:  # an empty batch (or map): nothing to filter; ATen's grouped convs refuse 0 groups
        return empty_like_layout(x, (x.shape[0], x.shape[1], *_out_size(x, stride)))
    if size == 1:  # the 1-tap envelope is the identity, whatever sigma (a copy: op outputs never alias inputs)
        return _strided(x, stride).contiguous(memory_format=memory_format(x)).clone()
    sizes = _sizes_of(size, axis_sizes, x.dim() - 2)
    one = _one_kernel(raw_sigma, sizes)
    which = dispatch.forward_impl(x, size, stride, padding_mode, impl, per_axis=not one)
    kernels, _ = _kernels(raw_sigma, sizes, x)
    return _run_kernel(x, one, kernels, stride, padding_mode, which)


# ---- envconv::envelope ------------------------------------------------------------------------------------

@torch.library.custom_op("envconv::envelope", mutates_args=())
def envelope(x: Tensor, raw_sigma: Tensor, size: int, stride: List[int], padding_mode: str, impl: str,
             axis_sizes: Optional[List[int]] = None) -> Tensor:
    """The envelope of ``x`` (N, C, L), (N, C, H, W) or (N, C, D, H, W) at every ``stride``-th position.

    ``raw_sigma``: (C,) or (1,), or (C, n) / (1, n) for a sigma per spatial axis; ``axis_sizes``:
    ``None`` (``size`` on every axis) or the size of each spatial axis, ``size`` the largest.
    """
    with _no_autocast(x):
        return _forward(x, raw_sigma, size, stride, padding_mode, impl, axis_sizes)


def _check_args(x: Tensor, raw_sigma: Tensor, size: int, stride: List[int],
                axis_sizes: Optional[List[int]] = None) -> None:
    """What the kernels assume, checked by the real and the fake ones (the compiler and export see the same errors)."""
    EF.check_floating_point(x)
    torch._check(x.dim() in (3, 4, 5), lambda: f"envconv::envelope: x must be (N, C, L), (N, C, H, W) or "
                                               f"(N, C, D, H, W), got {x.dim()} dims")
    torch._check(raw_sigma.dim() in (1, 2) and raw_sigma.shape[0] in (1, x.shape[1])
                 and (raw_sigma.dim() == 1 or raw_sigma.shape[1] == x.dim() - 2),
                 lambda: f"envconv::envelope: raw_sigma must have shape (C,) or (1,), or (C, {x.dim() - 2}) / "
                         f"(1, {x.dim() - 2}) for a sigma per axis, got {tuple(raw_sigma.shape)}")
    torch._check(size >= 1 and size % 2 == 1, lambda: f"envconv::envelope: size must be odd and positive, got {size}")
    torch._check(len(stride) == x.dim() - 2 and all(s >= 1 for s in stride),
                 lambda: f"envconv::envelope: stride must be {x.dim() - 2} positive ints (one per spatial axis), "
                         f"got {stride}")
    torch._check(axis_sizes is None or (len(axis_sizes) == x.dim() - 2 and max(axis_sizes) == size
                                        and all(k >= 1 and k % 2 == 1 for k in axis_sizes)),
                 lambda: f"envconv::envelope: axis_sizes must be {x.dim() - 2} odd positive ints (one per spatial "
                         f"axis) whose largest is size={size}, got {axis_sizes}")


@envelope.register_fake
def _(x, raw_sigma, size, stride, padding_mode, impl, axis_sizes=None):
    _check_args(x, raw_sigma, size, stride, axis_sizes)
    return empty_like_layout(x, (x.shape[0], x.shape[1], *_out_size(x, stride)))


# ---- envconv::envelope_backward ---------------------------------------------------------------------------

@torch.library.custom_op("envconv::envelope_backward", mutates_args=())
def envelope_backward(grad: Tensor, x: Tensor, raw_sigma: Tensor, size: int, stride: List[int], padding_mode: str,
                      impl: str, need_x: bool, need_sigma: bool,
                      axis_sizes: Optional[List[int]] = None) -> Tuple[Tensor, Tensor]:
    """``(grad_x, grad_raw_sigma)`` of :func:`envelope` by eq. (7) and (8); an empty tensor for one not needed."""
    with _no_autocast(x):
        return _backward(grad, x, raw_sigma, size, stride, padding_mode, impl, need_x, need_sigma, axis_sizes)


def _backward(grad, x, raw_sigma, size, stride, padding_mode, impl, need_x, need_sigma, axis_sizes=None):
    _check_args(x, raw_sigma, size, stride, axis_sizes)
    empty = x.new_empty(0)
    if x.numel() == 0:
        grad_x = torch.zeros_like(x, memory_format=memory_format(x)) if need_x else None
        grad_raw = torch.zeros_like(raw_sigma) if need_sigma else None
    elif size == 1:
        grad_x = None
        if need_x:
            grad_x = torch.zeros_like(x, memory_format=memory_format(x))
            _strided(grad_x, stride).copy_(grad)
        grad_raw = torch.zeros_like(raw_sigma) if need_sigma else None
    else:
        sizes = _sizes_of(size, axis_sizes, x.dim() - 2)
        one = _one_kernel(raw_sigma, sizes)
        which = dispatch.backward_impl(x, size, stride, padding_mode, impl, per_axis=not one)
        kernels, dkernels = _kernels(raw_sigma, sizes, x, derivative=True)
        if which == "fused":
            grad_x, grad_c = cpu.backward(grad, x, _for_kernel(kernels, one), _for_kernel(dkernels, one), stride,
                                          need_x)
        elif which == "triton":
            from . import triton_kernels

            grad_x, grad_c = triton_kernels.backward(grad, x, _for_kernel(kernels, one), _for_kernel(dkernels, one),
                                                     stride, need_x, need_sigma)
        else:
            grad_x, grad_c = composite.backward(grad, x, [k.to(x.dtype) for k in kernels], dkernels, stride,
                                                padding_mode, need_x, need_sigma, sigma_per_axis=raw_sigma.dim() == 2)
            if grad_x is not None:
                grad_x = grad_x.contiguous(memory_format=memory_format(x))
        grad_raw = _reduce_sigma_grad(grad_c, raw_sigma) if need_sigma else None
    return (grad_x if need_x else empty), (grad_raw if need_sigma else raw_sigma.new_empty(0))


@envelope_backward.register_fake
def _(grad, x, raw_sigma, size, stride, padding_mode, impl, need_x, need_sigma, axis_sizes=None):
    _check_args(x, raw_sigma, size, stride, axis_sizes)
    torch._check(grad.dim() == x.dim() and tuple(grad.shape[2:]) == tuple(_out_size(x, stride)),
                 lambda: f"envconv::envelope_backward: grad has shape {tuple(grad.shape)}, the envelope's output "
                         f"{(x.shape[0], x.shape[1], *_out_size(x, stride))}")
    grad_x = empty_like_layout(x, x.shape) if need_x else x.new_empty(0)
    return grad_x, raw_sigma.new_empty(raw_sigma.shape if need_sigma else (0,))


# ---- envconv::envelope_conv2d -----------------------------------------------------------------------------

@torch.library.custom_op("envconv::envelope_conv2d", mutates_args=())
def envelope_conv2d(x: Tensor, raw_sigma: Tensor, weight: Tensor, bias: Optional[Tensor], size: int,
                    env_stride: List[int], padding_mode: str, impl: str, stride: List[int], padding: List[int],
                    dilation: List[int], groups: int, axis_sizes: Optional[List[int]] = None) -> Tensor:
    """``conv2d(envelope(x), weight, bias, stride, padding, dilation, groups)``; backward recomputes the envelope."""
    with _no_autocast(x):
        smoothed = _forward(x, raw_sigma, size, env_stride, padding_mode, impl, axis_sizes)
        return F.conv2d(smoothed, weight, bias, stride, padding, dilation, groups)


@envelope_conv2d.register_fake
def _(x, raw_sigma, weight, bias, size, env_stride, padding_mode, impl, stride, padding, dilation, groups,
      axis_sizes=None):
    _check_args(x, raw_sigma, size, env_stride, axis_sizes)
    torch._check(x.dim() == 4, lambda: f"envconv::envelope_conv2d: x must be 4-D (N, C, H, W), got {x.dim()} dims")
    torch._check(weight.dim() == 4 and weight.shape[1] * groups == x.shape[1],
                 lambda: f"envconv::envelope_conv2d: weight {tuple(weight.shape)} with groups={groups} does not take "
                         f"{x.shape[1]} input channels")
    smoothed = empty_like_layout(x, (x.shape[0], x.shape[1], *_out_size(x, env_stride)))
    return F.conv2d(smoothed, weight, bias, stride, padding, dilation, groups)


# ---- envconv::envelope_conv: the same for 1-D and 3-D (and 2-D) maps -----------------------------------------

@torch.library.custom_op("envconv::envelope_conv", mutates_args=())
def envelope_conv(x: Tensor, raw_sigma: Tensor, weight: Tensor, bias: Optional[Tensor], size: int,
                  env_stride: List[int], padding_mode: str, impl: str, stride: List[int], padding: List[int],
                  dilation: List[int], groups: int, axis_sizes: Optional[List[int]] = None) -> Tensor:
    """:func:`envelope_conv2d` for ``x`` with 1-3 spatial dims: ``conv{n}d(envelope(x), weight, ...)``."""
    with _no_autocast(x):
        smoothed = _forward(x, raw_sigma, size, env_stride, padding_mode, impl, axis_sizes)
        return _CONV[x.dim()](smoothed, weight, bias, stride, padding, dilation, groups)


@envelope_conv.register_fake
def _(x, raw_sigma, weight, bias, size, env_stride, padding_mode, impl, stride, padding, dilation, groups,
      axis_sizes=None):
    _check_args(x, raw_sigma, size, env_stride, axis_sizes)
    torch._check(weight.dim() == x.dim() and weight.shape[1] * groups == x.shape[1],
                 lambda: f"envconv::envelope_conv: weight {tuple(weight.shape)} with groups={groups} does not take "
                         f"{x.shape[1]} input channels of a {x.dim()}-D input")
    smoothed = empty_like_layout(x, (x.shape[0], x.shape[1], *_out_size(x, env_stride)))
    return _CONV[x.dim()](smoothed, weight, bias, stride, padding, dilation, groups)


# ---- autocast: the dtype F.conv2d would return ---------------------------------------------------------

#: The dispatch keys of autocast per device type.
_AUTOCAST_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}
_autocast_lib = torch.library.Library("envconv", "FRAGMENT")  # kept alive: it holds the registrations


def _autocast_dtype(device: str) -> torch.dtype:
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.get_autocast_dtype(device)
    return torch.get_autocast_cpu_dtype() if device == "cpu" else torch.get_autocast_gpu_dtype()


def _register_autocast(name: str, cast: Tuple[int, ...]) -> None:
    """Under autocast, the op's arguments at positions ``cast`` go to the autocast dtype, as ``F.conv2d``'s do.

    Like autocast's own rule for convolutions, float64 and non-float tensors are left alone;
    ``raw_sigma`` keeps its dtype (the kernel of eq. (9) is computed in it, then cast).
    """
    op = getattr(torch.ops.envconv, name).default
    for device, key in _AUTOCAST_KEYS.items():
        excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

        def kernel(keyset, *args, _device=device, _excluded=excluded):
            dtype = _autocast_dtype(_device)
            args = [a.to(dtype) if i in cast and isinstance(a, Tensor) and a.dtype in (torch.float32, torch.float16,
                                                                                         torch.bfloat16)
                    else a for i, a in enumerate(args)]
            with torch._C._ExcludeDispatchKeyGuard(_excluded):
                return op(*args)

        _autocast_lib.impl(name, kernel, key, with_keyset=True)


_register_autocast("envelope", cast=(0,))
_register_autocast("envelope_conv2d", cast=(0, 2, 3))
_register_autocast("envelope_conv", cast=(0, 2, 3))


# ---- without the ops: plain ATen, for exporters that cannot carry a custom op -----------------------------

def envelope_decomposed(x: Tensor, raw_sigma: Tensor, size, stride: List[int], padding_mode: str) -> Tensor:
    """The envelope from differentiable ATen ops only (two 1-D passes, no batch folding).

    Used while ``torch.onnx.export`` traces a model (:func:`torch.onnx.is_in_onnx_export`): the
    exported graph then holds two depth-wise ``Conv`` nodes per envelope, for any batch size.
    The dynamo exporter computes their kernel from the exported ``raw_sigma``; the TorchScript
    exporter, which needs kernels of known shape, gets it as a constant. ``size``: an int or one per axis.
    """
    if max(EF.axis_sizes(size, x.dim() - 2)) == 1:
        return _strided(x, stride)
    kernels = [k.to(x.dtype) for k in _axis_kernels(EF.gaussian_kernel1d, raw_sigma, size, x)]
    if torch.jit.is_tracing():
        # The TorchScript exporter needs Conv kernels of known shape: bake the kernels in as
        # constants (the exported graph is for inference; sigma is fixed there anyway).
        kernels = [torch.tensor(k.detach().tolist(), dtype=x.dtype, device=x.device) for k in kernels]
    for dim in composite.axes(x):
        x = composite.pass1d(x, kernels[dim - 2], dim, padding_mode, stride[dim - 2])
    return x


# ---- FLOP formulas ----------------------------------------------------------------------------------------

def envelope_flops(x_shape, size, stride) -> int:
    r"""FLOPs (2 per multiply-add) of the separable envelope at the positions it computes (``size``: one or per axis).

    The passes run from the last axis to the first, each on its input at the strided positions of
    its own axis: in 2-D the width pass on every input row at the strided columns, the height pass
    at the strided output positions, :math:`2 N C k_g \lceil W/s_w \rceil (H + \lceil H/s_h \rceil)`.
    """
    out = [(n - 1) // s + 1 for n, s in zip(list(x_shape)[2:], stride)]
    return 2 * separable_macs(x_shape, out, size)


def separable_macs(x_shape, out_spatial, size) -> int:
    """Multiply-adds of the separable passes (last axis first) from an input of ``x_shape`` to ``out_spatial``.

    Each pass computes its own axis at the output positions: its axis's size (``size``, an int
    or one per axis) multiply-adds per element it outputs. The 1-tap envelope (every axis 1) is
    the identity, no work; a 1-tap pass among longer ones is computed, one multiply-add per element.
    """
    sizes = EF.axis_sizes(size, len(x_shape) - 2)
    shape, macs = list(x_shape), 0
    for axis in range(len(shape) - 1, 1, -1):
        shape[axis] = out_spatial[axis - 2]
        elements = 1
        for n in shape:
            elements *= n
        if max(sizes) > 1:
            macs += sizes[axis - 2] * elements
    return macs


def _op_sizes(size: int, axis_sizes) -> object:
    """The FLOP formulas' size: an op's int, or its per-axis list."""
    return size if axis_sizes is None else list(axis_sizes)


@register_flop_formula(torch.ops.envconv.envelope)
def _(x_shape, raw_shape, size, stride, padding_mode=None, impl=None, axis_sizes=None, *args, out_shape=None,
      **kwargs) -> int:
    return envelope_flops(x_shape, _op_sizes(size, axis_sizes), stride)


@register_flop_formula(torch.ops.envconv.envelope_backward)
def _(grad_shape, x_shape, raw_shape, size, stride, padding_mode, impl, need_x, need_sigma, axis_sizes=None, *args,
      out_shape=None, **kwargs) -> int:
    # input gradient: the transposed passes (a forward's count); sigma gradient: the forward's
    # intermediate, the derivative pass, two height passes and the dot product with the gradient
    sizes = _op_sizes(size, axis_sizes)
    flops = envelope_flops(x_shape, sizes, stride) if need_x else 0
    if need_sigma and size > 1:
        elements = 1
        for n in grad_shape:
            elements *= n
        flops += 2 * envelope_flops(x_shape, sizes, stride) + 2 * elements
    return flops


@register_flop_formula([torch.ops.envconv.envelope_conv2d, torch.ops.envconv.envelope_conv])
def _(x_shape, raw_shape, w_shape, b_shape, size, env_stride, padding_mode, impl, stride, padding, dilation, groups,
      axis_sizes=None, *args, out_shape=None, **kwargs) -> int:
    smoothed = (x_shape[0], x_shape[1], *((n - 1) // s + 1 for n, s in zip(x_shape[2:], env_stride)))
    return envelope_flops(x_shape, _op_sizes(size, axis_sizes), env_stride) + conv_flop_count(
        smoothed, w_shape, out_shape, transposed=False)
