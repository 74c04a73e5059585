r"""The envelope as PyTorch operators: ``torch.ops.envconv.*``.

Three ops, registered with :func:`torch.library.custom_op`, each with a fake (meta) kernel for
the compiler and export (their FLOP formulas are in :mod:`envconv.ops.flop_formulas`):

* ``envconv::envelope(x, raw_sigma, size, stride, padding_mode, impl, axis_sizes=None) -> y`` - eq. (3)
  with the kernel of eq. (9), evaluated every ``stride`` pixels; its backward is the next op.
  ``raw_sigma`` is (C,) or (1,) - a sigma per channel, or one for all - or (C, n) / (1, n): a
  sigma per channel and spatial axis (n of them), each axis filtered with its own. ``size`` is
  :math:`k_g` on every axis; ``axis_sizes`` (one per spatial axis, ``size`` their largest) gives
  each axis its own.
* ``envconv::envelope_backward(grad, x, raw_sigma, ...) -> (grad_x, grad_raw_sigma)`` - eq. (7)
  and the eq. (8) sigma gradient (an empty tensor for a gradient not asked for); differentiable
  too (double backward, for gradient penalties).
* ``envconv::envelope_conv(x, raw_sigma, weight, bias, ...) -> y`` - the envelope followed by
  a convolution (eq. (3)-(4); ``conv1d`` / ``conv2d`` / ``conv3d`` by the input's rank), saving
  only ``x`` for backward: the envelope is recomputed there (one cheap forward) instead of
  keeping two extra feature maps per layer alive.

Their autograd (backward, double backward, forward AD, ``torch.func``) is registered in
:mod:`envconv.ops.autograd`. Which kernel computes an op is decided in :mod:`envconv.ops.dispatch`
alone; ``impl`` forces one.
Every implementation returns the input's memory format (channels_last in, channels_last out).
"""

from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor

from .. import kernels as EF
from . import composite, cpu, dispatch
from .composite import CONV
from .layout import empty_like_layout, memory_format

__all__ = ["envelope", "envelope_backward", "envelope_conv", "envelope_kernels", "axis_kernels", "op_size", "size_args",
           "strided"]


def _out_size(x: Tensor, stride: List[int]):
    return tuple((n - 1) // s + 1 for n, s in zip(x.shape[2:], stride))


def strided(x: Tensor, stride: List[int]) -> Tensor:
    """``x`` at every ``stride``-th position of each spatial axis (a view)."""
    return x[(..., *(slice(None, None, s) for s in stride))]


def _sizes_of(size: int, axis_sizes: Optional[List[int]], dims: int) -> List[int]:
    """The envelope size of each of ``dims`` spatial axes from an op's ``size`` and ``axis_sizes``."""
    return [size] * dims if axis_sizes is None else list(axis_sizes)


def op_size(size: int, axis_sizes: Optional[List[int]]) -> Union[int, List[int]]:
    """An op's size arguments as one value: its int ``size``, or its per-axis list where it has one."""
    return size if axis_sizes is None else list(axis_sizes)


def size_args(sizes, dims: int) -> Tuple[int, Optional[List[int]]]:
    """An op's ``(size, axis_sizes)`` for sizes given as an int or one per axis (``None``: the same on every axis)."""
    sizes = EF.axis_sizes(sizes, dims)
    return max(sizes), (None if len(set(sizes)) == 1 else list(sizes))


def axis_kernels(kernel_fn, raw_sigma: Tensor, size, x: Tensor) -> List[Tensor]:
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


def envelope_kernels(raw_sigma: Tensor, size, x: Tensor, derivative: bool = False):
    """(kernels, d kernels / d raw) of eq. (9) per spatial axis of ``x``, each (C, k), in ``raw_sigma``'s dtype."""
    kernels = axis_kernels(EF.gaussian_kernel1d, raw_sigma, size, x)
    if not derivative:
        return kernels, None
    return kernels, axis_kernels(EF.gaussian_kernel1d_derivative, raw_sigma, size, x)


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
    """What the C++ and Triton kernels take: one (C, k) kernel for all axes (``one``), or the list of them."""
    return kernels[0] if one else kernels


def _run_kernel(x: Tensor, one: bool, kernels: List[Tensor], stride: List[int], padding_mode: str,
                which: str) -> Tensor:
    if which == "cpp":
        return cpu.forward(x, _for_kernel(kernels, one), stride, ring=dispatch.ring_loop_applies(x, not one))
    if which == "triton":
        from . import triton_kernels

        return triton_kernels.forward(x, _for_kernel(kernels, one), stride)
    out = composite.forward(x, [k.to(x.dtype) for k in kernels], stride, padding_mode, which)
    return out.contiguous(memory_format=memory_format(x))


def has_tangent(tensors) -> bool:
    """Whether a tensor of ``tensors`` (``None`` allowed) carries a forward-mode tangent at the current level."""
    try:
        return any(t is not None and torch.autograd.forward_ad.unpack_dual(t).tangent is not None for t in tensors)
    except RuntimeError:  # vmap's tensor (vmap has no rule for it): the op's vmap rule asks again one level down
        return False


def _refuse_tangents(*tensors) -> None:
    """The ops' own autograd has no forward mode (its tangent would silently be zero): say what does."""
    if has_tangent(tensors):
        raise RuntimeError("torch.ops.envconv.* called directly has no forward-mode AD; call envconv.functional "
                           "(or an envconv layer), whose calls of the ops support it")


def _forward(x: Tensor, raw_sigma: Tensor, size: int, stride: List[int], padding_mode: str, impl: str,
             axis_sizes: Optional[List[int]] = None) -> Tensor:
    _check_args(x, raw_sigma, size, stride, axis_sizes)  # the same errors as under the compiler and export
    _refuse_tangents(x, raw_sigma)
    if x.numel() == 0:  # an empty batch (or map): nothing to filter; ATen's grouped convs refuse 0 groups
        return empty_like_layout(x, (x.shape[0], x.shape[1], *_out_size(x, stride)))
    if size == 1:  # the 1-tap envelope is the identity, whatever sigma (a copy: op outputs never alias inputs)
        return strided(x, stride).contiguous(memory_format=memory_format(x)).clone()
    sizes = _sizes_of(size, axis_sizes, x.dim() - 2)
    one = _one_kernel(raw_sigma, sizes)
    which = dispatch.forward_impl(x, size, stride, padding_mode, impl, per_axis=not one)
    kernels, _ = envelope_kernels(raw_sigma, sizes, x)
    return _owned(_run_kernel(x, one, kernels, stride, padding_mode, which))


def _owned(t: Tensor) -> Tensor:
    """``t``, copied if it is a view (1-D kernels reshape 2-D results): an op's output owns its memory.

    Else autograd refuses an in-place op on it (``Conv1d -> ReLU(inplace=True)``).
    """
    return t.clone() if t._base is not None else t


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
    torch._check(1 <= size <= EF.MAX_SIZE and size % 2 == 1,
                 lambda: f"envconv::envelope: size must be odd, from 1 to {EF.MAX_SIZE}, got {size}")
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


def _check_grad(grad: Tensor, x: Tensor, stride: List[int]) -> None:
    """The upstream gradient has the envelope's output shape (the kernels index it by x's: never read past it)."""
    expected = (x.shape[0], x.shape[1], *_out_size(x, stride))
    torch._check(tuple(grad.shape) == expected and grad.dtype == x.dtype and grad.device == x.device,
                 lambda: f"envconv::envelope_backward: grad must be the envelope's output, {expected} "
                         f"({x.dtype}, {x.device}), got {tuple(grad.shape)} ({grad.dtype}, {grad.device})")


def _backward(grad, x, raw_sigma, size, stride, padding_mode, impl, need_x, need_sigma, axis_sizes=None):
    _check_args(x, raw_sigma, size, stride, axis_sizes)
    _check_grad(grad, x, stride)
    _refuse_tangents(grad, x, raw_sigma)
    empty = x.new_empty(0)
    if x.numel() == 0:
        grad_x = torch.zeros_like(x, memory_format=memory_format(x)) if need_x else None
        grad_raw = torch.zeros_like(raw_sigma) if need_sigma else None
    elif size == 1:
        grad_x = None
        if need_x:
            grad_x = torch.zeros_like(x, memory_format=memory_format(x))
            strided(grad_x, stride).copy_(grad)
        grad_raw = torch.zeros_like(raw_sigma) if need_sigma else None
    else:
        sizes = _sizes_of(size, axis_sizes, x.dim() - 2)
        one = _one_kernel(raw_sigma, sizes)
        which = dispatch.backward_impl(x, size, stride, padding_mode, impl, per_axis=not one)
        kernels, dkernels = envelope_kernels(raw_sigma, sizes, x, derivative=True)
        if which == "cpp":
            grad_x, grad_c = cpu.backward(grad, x, _for_kernel(kernels, one), _for_kernel(dkernels, one), stride,
                                          need_x, ring=dispatch.ring_loop_applies(x, not one))
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
    return (_owned(grad_x) if need_x else empty), (grad_raw if need_sigma else raw_sigma.new_empty(0))


@envelope_backward.register_fake
def _(grad, x, raw_sigma, size, stride, padding_mode, impl, need_x, need_sigma, axis_sizes=None):
    _check_args(x, raw_sigma, size, stride, axis_sizes)
    _check_grad(grad, x, stride)
    grad_x = empty_like_layout(x, x.shape) if need_x else x.new_empty(0)
    return grad_x, raw_sigma.new_empty(raw_sigma.shape if need_sigma else (0,))


# ---- envconv::envelope_conv: the envelope, then conv1d / conv2d / conv3d ---------------------------------

@torch.library.custom_op("envconv::envelope_conv", mutates_args=())
def envelope_conv(x: Tensor, raw_sigma: Tensor, weight: Tensor, bias: Optional[Tensor], size: int,
                  env_stride: List[int], padding_mode: str, impl: str, stride: List[int], padding: List[int],
                  dilation: List[int], groups: int, axis_sizes: Optional[List[int]] = None) -> Tensor:
    """``conv{n}d(envelope(x), weight, bias, stride, padding, dilation, groups)`` for ``x`` with 1-3 spatial axes.

    The backward recomputes the envelope from ``x``, the only feature map it keeps.
    """
    _refuse_tangents(weight, bias)
    with _no_autocast(x):
        smoothed = _forward(x, raw_sigma, size, env_stride, padding_mode, impl, axis_sizes)
        return _owned(CONV[x.dim()](smoothed, weight, bias, stride, padding, dilation, groups))


@envelope_conv.register_fake
def _(x, raw_sigma, weight, bias, size, env_stride, padding_mode, impl, stride, padding, dilation, groups,
      axis_sizes=None):
    _check_args(x, raw_sigma, size, env_stride, axis_sizes)
    torch._check(weight.dim() == x.dim() and weight.shape[1] * groups == x.shape[1],
                 lambda: f"envconv::envelope_conv: weight {tuple(weight.shape)} with groups={groups} does not take "
                         f"{x.shape[1]} input channels of a {x.dim()}-D input")
    smoothed = empty_like_layout(x, (x.shape[0], x.shape[1], *_out_size(x, env_stride)))
    return CONV[x.dim()](smoothed, weight, bias, stride, padding, dilation, groups)


# ---- autocast: the dtype F.conv2d would return ---------------------------------------------------------

#: op -> the positions of its arguments that autocast casts (x; weight and bias), as F.conv2d's.
_AUTOCAST = {"envelope": (0,), "envelope_conv": (0, 2, 3)}
#: The autocast dispatch keys by device type (a device without one gets no cast rule, as for any op).
_AUTOCAST_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA", "xpu": "AutocastXPU", "mps": "AutocastMPS"}
_lib = torch.library.Library("envconv", "FRAGMENT")  # kept alive: it holds the autocast kernels


def autocast_args(name: str, args):
    """``args`` of op ``name`` with x (and weight, bias) in the autocast dtype of the moment, if autocast is on.

    Like autocast's own rule for convolutions, float64 and non-float tensors are left alone;
    ``raw_sigma`` keeps its dtype (the kernel of eq. (9) is computed in it, then cast).
    ``torch.library.register_autocast`` would fix one dtype when it registers; this follows
    ``torch.autocast(dtype=...)``.
    """
    device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
    if name not in _AUTOCAST or device not in _AUTOCAST_KEYS or not torch.is_autocast_enabled(device):
        return args
    dtype = torch.get_autocast_dtype(device)
    return tuple(a.to(dtype) if i in _AUTOCAST[name] and isinstance(a, Tensor) and a.dtype in (
        torch.float32, torch.float16, torch.bfloat16) else a for i, a in enumerate(args))


def _autocast_kernel(name: str, device: str):
    op = getattr(torch.ops.envconv, name).default

    def kernel(*args):
        args = autocast_args(name, args)
        with torch.autocast(device, enabled=False):  # excludes this autocast key: the op below it
            return op(*args)

    return kernel


for _name in _AUTOCAST:
    for _device, _key in _AUTOCAST_KEYS.items():
        try:
            _lib.impl(_name, _autocast_kernel(_name, _device), _key)
        except RuntimeError:  # a torch build without this device's autocast key
            pass
