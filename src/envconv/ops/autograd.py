r"""Autograd for the ops - reverse mode, double backward, forward mode and :mod:`torch.func` - once per op.

Each op's ``setup_context`` / ``backward`` / ``jvp`` below take the op's own arguments. They
are registered twice, with public APIs only: as the op's autograd
(:func:`torch.library.register_autograd`: reverse mode and double backward of
``torch.ops.envconv.*`` called directly), and as an :class:`torch.autograd.Function` with
``setup_context``, ``jvp`` and a generated vmap rule, which :func:`apply` - the way
:mod:`envconv.functional` and the layers call the ops - uses whenever a gradient or a tangent is
recorded. The op's own autograd cannot serve :mod:`torch.func` (it has no ``setup_context``:
pytorch#168393, #170834) nor forward AD (no ``jvp``: the tangent would silently be zero), the
Function serves both; the vmap rules are :func:`torch.library.register_vmap`'s. So
``torch.func.grad``, ``vmap`` (per-sample gradients), ``jacrev``, ``jvp``, ``jacfwd``,
``hessian`` and :mod:`torch.autograd.forward_ad` differentiate the same ops that the compiler
and the exporters see.

* ``envelope``: backward by ``envelope_backward`` (eq. (7), (8)); jvp
  :math:`\dot Y = E_\sigma * \dot X + (\partial_{\tilde\sigma} E_\sigma * X)\,\dot{\tilde\sigma}`.
* ``envelope_backward``: differentiable in closed form from the kernel's first and second
  sigma derivatives (double backward, for gradient penalties; forward-over-reverse for Hessians).
* ``envelope_conv`` (1-3 spatial dims): backward recomputes the envelope; jvp by the product rule.
"""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from .. import kernels as EF
from . import composite
from .composite import CONV
from .dispatch import stem_backward_applies
from .layout import memory_format
from .library import autocast_args, envelope_kernels, has_tangent, op_size, size_args, strided

__all__ = ["apply"]


# Inside this module an envelope's size is ``sizes``: the op's int, or its per-axis list where it has one;
# the ops get it back as their (size, axis_sizes) arguments.

def _sizes(size: int, rest):
    """The size of an op call whose trailing arguments are ``rest`` (``axis_sizes`` last, when given)."""
    return op_size(size, rest[-1] if rest else None)


def _largest(sizes) -> int:
    return sizes if isinstance(sizes, int) else max(sizes)


def _envelope(x, raw_sigma, sizes, stride, padding_mode, impl):
    size, axis_sizes = size_args(sizes, x.dim() - 2)
    return apply("envelope", x, raw_sigma, size, stride, padding_mode, impl, axis_sizes)


def _envelope_backward(grad, x, raw_sigma, sizes, stride, padding_mode, impl, need_x, need_sigma):
    size, axis_sizes = size_args(sizes, x.dim() - 2)
    return apply("envelope_backward", grad, x, raw_sigma, size, stride, padding_mode, impl, need_x, need_sigma,
                 axis_sizes)


# ---- envconv::envelope ------------------------------------------------------------------------------------

def _envelope_setup(ctx, inputs, output):
    x, raw_sigma, size, stride, padding_mode, impl, *rest = inputs
    ctx.save_for_backward(x, raw_sigma)
    ctx.save_for_forward(x, raw_sigma)
    ctx.config = (_sizes(size, rest), list(stride), padding_mode, impl)
    ctx.extra = len(rest)


def _envelope_grad(ctx, grad):
    x, raw_sigma = ctx.saved_tensors
    need_x, need_sigma = ctx.needs_input_grad[:2]
    tail = (None,) * (4 + ctx.extra)
    if not (need_x or need_sigma):
        return (None, None, *tail)
    grad_x, grad_raw = _envelope_backward(grad, x, raw_sigma, *ctx.config, need_x, need_sigma)
    return ((grad_x if need_x else None), (grad_raw if need_sigma else None), *tail)


_KERNELS = (EF.gaussian_kernel1d, EF.gaussian_kernel1d_derivative, EF.gaussian_kernel1d_second_derivative)


def _pass_kernels(raw_sigma: Tensor, sizes, x: Tensor, terms) -> dict:
    """The per-channel 1-D kernels, by (sigma column, order, size), that ``terms`` use (each costs a softmax)."""
    columns, sizes = EF.axis_raw_sigmas(raw_sigma, x.dim() - 2), EF.axis_sizes(sizes, x.dim() - 2)
    keys = {(*key, sizes[axis]) for _, per_axis in terms for axis, key in enumerate(per_axis)}
    return {(col, order, k): _KERNELS[order](columns[col], k).expand(x.shape[1], k).to(x.dtype)
            for col, order, k in keys}


def _passes(x: Tensor, raw_sigma: Tensor, sizes, stride: List[int], padding_mode: str, terms) -> Tensor:
    r"""Sum over ``terms`` of (weight, kernel per spatial axis) separable passes of ``x``.

    A kernel is named (sigma column, order): the column of ``raw_sigma`` it is computed from (0
    for one sigma per channel, the axis for a sigma per axis) and its order in
    :math:`\tilde\sigma`: 0 the Gaussian of eq. (9), 1 and 2 its first and second derivatives, all
    per channel; ``terms[i][1][a]`` is the kernel along spatial axis ``a``. The passes run from
    the last axis to the first, sharing common prefixes. ``sizes``: an int or one per axis.
    """
    kernels = _pass_kernels(raw_sigma, sizes, x, terms)
    sizes = EF.axis_sizes(sizes, x.dim() - 2)
    done = {(): x}
    out = 0
    for weight, keys in terms:
        key = ()
        for axis in range(len(keys) - 1, -1, -1):  # the last spatial axis (the width) first
            step = key + (keys[axis],)
            if step not in done:
                done[step] = composite.pass1d(done[key], kernels[(*keys[axis], sizes[axis])], axis + 2,
                                              padding_mode, stride[axis])
            key = step
        out = out + weight * done[key]
    return out


def _passes_adjoint(grad: Tensor, x: Tensor, raw_sigma: Tensor, sizes, stride: List[int], padding_mode: str,
                    pairs) -> Tensor:
    """The adjoint of :func:`_passes` applied to ``grad``: a gradient shaped like ``x``."""
    kernels = _pass_kernels(raw_sigma, sizes, x, pairs)
    sizes = EF.axis_sizes(sizes, x.dim() - 2)
    ndim = len(stride)
    # the input of the pass along each spatial axis (only their shapes are read): axes after it strided
    sources = [x[(..., *(slice(None, None, stride[a]) if a > axis else slice(None) for a in range(ndim)))]
               for axis in range(ndim)]
    out = 0
    for weight, keys in pairs:
        g = grad
        for axis in range(ndim):  # adjoints in reverse order of the passes: the first axis first
            g = composite.pass1d_adjoint(g, sources[axis], kernels[(*keys[axis], sizes[axis])], axis + 2,
                                         padding_mode, stride[axis])
        out = out + weight * g
    return out


def _sigma_axes(raw_sigma: Tensor, ndim: int):
    """The spatial axes each sigma scales: all of them for a sigma per channel, one each for a sigma per axis."""
    return [tuple(range(ndim))] if raw_sigma.dim() == 1 else [(a,) for a in range(ndim)]


def _term(raw_sigma: Tensor, ndim: int, *axes_orders):
    """The kernel keys along each axis: the Gaussian except ``order`` on the given axes."""
    orders = dict(axes_orders)
    return tuple((0 if raw_sigma.dim() == 1 else axis, orders.get(axis, 0)) for axis in range(ndim))


def _first_terms(raw_sigma: Tensor, ndim: int, axes):
    r"""The separable kernel's derivative in the sigma of ``axes`` (product rule): :math:`\sum_{a} g'` along a."""
    return tuple((1.0, _term(raw_sigma, ndim, (a, 1))) for a in axes)


def _second_terms(raw_sigma: Tensor, ndim: int, axes_s, axes_t):
    r"""The second derivative in the sigmas of ``axes_s`` and ``axes_t``, as (weight, kernel keys per axis).

    One sigma: :math:`\sum_a g'' \text{ along } a + 2 \sum_{a<b} g' \text{ along } a, b` (in 2-D:
    :math:`g''\otimes g + 2 g'\otimes g' + g\otimes g''`); two sigmas of different axes: :math:`g'` along both.
    """
    if axes_s != axes_t:
        return tuple((1.0, _term(raw_sigma, ndim, (a, 1), (b, 1))) for a in axes_s for b in axes_t)
    return tuple((1.0, _term(raw_sigma, ndim, (a, 2))) for a in axes_s) + tuple(
        (2.0, _term(raw_sigma, ndim, (a, 1), (b, 1))) for i, a in enumerate(axes_s) for b in axes_s[i + 1:])


def _sigma_derivatives(x: Tensor, raw_sigma: Tensor, size: int, stride: List[int], padding_mode: str):
    r"""The envelope's derivative in each sigma (one, or one per axis), applied to every channel of ``x``.

    One sigma per channel: :math:`[(g' \otimes g + g \otimes g') * X_c]`; a sigma per axis in 2-D:
    :math:`[(g'_h \otimes g_w) * X_c, (g_h \otimes g'_w) * X_c]`; at the strided positions.
    """
    groups = _sigma_axes(raw_sigma, len(stride))
    if _largest(size) == 1 or x.numel() == 0:
        return [torch.zeros_like(strided(x, stride)) for _ in groups]
    return [_passes(x, raw_sigma, size, stride, padding_mode, _first_terms(raw_sigma, len(stride), axes))
            for axes in groups]


def _sigma_second_derivatives(x: Tensor, raw_sigma: Tensor, size: int, stride: List[int], padding_mode: str):
    """The envelope's second derivatives in each pair of sigmas applied to ``x``: a symmetric list of lists."""
    groups = _sigma_axes(raw_sigma, len(stride))
    if _largest(size) == 1 or x.numel() == 0:
        zero = torch.zeros_like(strided(x, stride))
        return [[zero] * len(groups) for _ in groups]
    out = [[None] * len(groups) for _ in groups]
    for s, axes_s in enumerate(groups):
        for t in range(s, len(groups)):
            terms = _second_terms(raw_sigma, len(stride), axes_s, groups[t])
            out[s][t] = out[t][s] = _passes(x, raw_sigma, size, stride, padding_mode, terms)
    return out


def _sigma_derivatives_adjoint(grad: Tensor, x: Tensor, raw_sigma: Tensor, size: int, stride: List[int],
                               padding_mode: str):
    """The adjoints of :func:`_sigma_derivatives` applied to ``grad`` (each shaped like ``x``)."""
    groups = _sigma_axes(raw_sigma, len(stride))
    if _largest(size) == 1 or x.numel() == 0:
        return [torch.zeros_like(x) for _ in groups]
    return [_passes_adjoint(grad, x, raw_sigma, size, stride, padding_mode, _first_terms(raw_sigma, len(stride), axes))
            for axes in groups]


def _column(t: Tensor, s: int) -> Tensor:
    """Sigma ``s``'s entries of a sigma-shaped tensor (a tangent or upstream gradient): (C,) or (1,)."""
    return t if t.dim() == 1 else t[:, s]


def _per_sigma(products, raw_sigma: Tensor) -> Tensor:
    """Per-channel sums of each sigma's ``products`` (N, C, *spatial), in ``raw_sigma``'s shape (summed if shared)."""
    sums = [p.sum([0, *range(2, p.dim())]) for p in products]
    per_channel = sums[0] if raw_sigma.dim() == 1 else torch.stack(sums, 1)
    if raw_sigma.shape[0] != per_channel.shape[0]:
        per_channel = per_channel.sum(0, keepdim=True)
    return per_channel.to(raw_sigma.dtype)


def _scaled_sum(parts, per_sigma: Tensor) -> Tensor:
    """``sum_s parts[s] * per_sigma[:, s]``: each sigma's part times its tangent or upstream gradient."""
    return sum(_scaled(p, _column(per_sigma, s)) for s, p in enumerate(parts))


def _envelope_tangent(x, raw_sigma, x_t, raw_t, size, stride, padding_mode, impl):
    r"""The envelope's tangent :math:`A\dot X + \sum_s (A'_s X)\dot\sigma_s` (also double backward's gradient of G)."""
    tangent = None
    if x_t is not None:
        tangent = _envelope(x_t, raw_sigma, size, stride, padding_mode, impl)
    if raw_t is not None:
        tangent = _add(tangent, _scaled_sum(_sigma_derivatives(x, raw_sigma, size, stride, padding_mode), raw_t))
    return tangent


def _second_order_grad(grad, x, raw_sigma, up_raw, size, stride, padding_mode) -> Tensor:
    r""":math:`\langle G, A''_{st} X\rangle \dot\sigma_t` summed over t, per sigma s, in ``raw_sigma``'s shape."""
    second = _sigma_second_derivatives(x, raw_sigma, size, stride, padding_mode)
    return _per_sigma([grad * _scaled_sum(row, up_raw) for row in second], raw_sigma)


def _envelope_jvp(ctx, x_t, raw_t, *_):
    x, raw_sigma = ctx.saved_tensors
    return _envelope_tangent(x, raw_sigma, x_t, raw_t, *ctx.config)



# ---- envconv::envelope_backward ---------------------------------------------------------------------------

def _envelope_backward_setup(ctx, inputs, output):
    grad, x, raw_sigma, size, stride, padding_mode, impl, need_x, need_sigma, *rest = inputs
    ctx.save_for_backward(grad, x, raw_sigma)
    ctx.save_for_forward(grad, x, raw_sigma)
    ctx.config = (_sizes(size, rest), list(stride), padding_mode, impl, need_x, need_sigma)
    ctx.extra = len(rest)


def _add(total, part):
    return part if total is None else total + part


def _scaled(t: Tensor, per_sigma: Tensor) -> Tensor:
    """``t`` (N, C, *spatial) times a per-channel (or shared) sigma tangent or upstream gradient."""
    return t * per_sigma.to(t.dtype).view(1, -1, *[1] * (t.dim() - 2))


def _envelope_backward_grad(ctx, up_x, up_raw):
    r"""Double backward, for gradient penalties: the backward is linear in its upstream gradient G.

    With :math:`A` the envelope, :math:`A'` and :math:`A''` its derivatives in :math:`\tilde\sigma`,
    the backward is :math:`(A^\top G,\ \langle G, A'X\rangle)`; paired with upstream
    :math:`(U_x, U_\sigma)` its gradients are :math:`A U_x + (A'X) U_\sigma` for G,
    :math:`(A'^\top G)\,U_\sigma` for X and :math:`\langle G, A'U_x\rangle + \langle G, A''X\rangle U_\sigma`
    for sigma - ops and ATen convolutions only, so every transform can differentiate them again.
    """
    grad, x, raw_sigma = ctx.saved_tensors
    size, stride, padding_mode, impl, need_x, need_sigma = ctx.config
    up_x, up_raw = (up_x if need_x else None), (up_raw if need_sigma else None)
    want_grad, want_x, want_raw = ctx.needs_input_grad[:3]
    grad_g = grad_x = grad_raw = None
    if want_grad and (up_x is not None or up_raw is not None):
        grad_g = _envelope_tangent(x, raw_sigma, up_x, up_raw, size, stride, padding_mode, impl)
    if want_x and up_raw is not None:
        grad_x = _scaled_sum(_sigma_derivatives_adjoint(grad, x, raw_sigma, size, stride, padding_mode), up_raw)
    if want_raw:
        if up_x is not None:
            grad_raw = _envelope_backward(grad, up_x, raw_sigma, size, stride, padding_mode, impl, False, True)[1]
        if up_raw is not None:
            grad_raw = _add(grad_raw, _second_order_grad(grad, x, raw_sigma, up_raw, size, stride, padding_mode))
    grads = [None if not want else (torch.zeros_like(t) if g is None else g)
             for g, t, want in zip((grad_g, grad_x, grad_raw), (grad, x, raw_sigma), (want_grad, want_x, want_raw))]
    return (*grads, *(None,) * (6 + ctx.extra))


def _envelope_backward_jvp(ctx, grad_t, x_t, raw_t, *_):
    r"""Forward-over-reverse (``jacfwd(jacrev(f))``, ``torch.func.hessian``): the backward's tangent.

    :math:`(A^\top \dot G + (A'^\top G)\dot\sigma,\ \langle \dot G, A'X\rangle + \langle G, A'\dot X\rangle
    + \langle G, A''X\rangle\dot\sigma)`, in the notation of :func:`_envelope_backward_grad`.
    """
    grad, x, raw_sigma = ctx.saved_tensors
    size, stride, padding_mode, impl, need_x, need_sigma = ctx.config
    tangent_x = tangent_raw = None
    if grad_t is not None:
        tangent_x, tangent_raw = _envelope_backward(grad_t, x, raw_sigma, size, stride, padding_mode, impl, need_x,
                                                    need_sigma)
    if need_x and raw_t is not None:
        tangent_x = _add(tangent_x, _scaled_sum(_sigma_derivatives_adjoint(grad, x, raw_sigma, size, stride,
                                                                           padding_mode), raw_t))
    if need_sigma and x_t is not None:
        tangent_raw = _add(tangent_raw, _envelope_backward(grad, x_t, raw_sigma, size, stride, padding_mode, impl,
                                                           False, True)[1])
    if need_sigma and raw_t is not None:
        tangent_raw = _add(tangent_raw, _second_order_grad(grad, x, raw_sigma, raw_t, size, stride, padding_mode))
    tangent_x = (torch.zeros_like(x) if tangent_x is None else tangent_x) if need_x else x.new_empty(0)
    tangent_raw = (torch.zeros_like(raw_sigma) if tangent_raw is None else tangent_raw) if need_sigma \
        else raw_sigma.new_empty(0)
    return tangent_x, tangent_raw


# ---- envconv::envelope_conv -------------------------------------------------------------------------------

def _conv_setup(ctx, inputs, output):
    x, raw_sigma, weight, bias = inputs[:4]
    ctx.save_for_backward(x, raw_sigma, weight)
    ctx.save_for_forward(x, raw_sigma, weight)
    size, *config = inputs[4:12]
    ctx.config = (_sizes(size, inputs[12:]), *config)
    ctx.extra = len(inputs) - 12
    ctx.bias_shape = None if bias is None else list(bias.shape)
    ctx.out_shape = output.shape


def _conv_grad(ctx, grad_out):
    x, raw_sigma, weight = ctx.saved_tensors
    size, env_stride, padding_mode, impl, stride, padding, dilation, groups = ctx.config
    need_x, need_raw, need_w, need_b = ctx.needs_input_grad[:4]
    tail, dims = (None,) * (8 + ctx.extra), x.dim() - 2
    if need_raw and not need_x and stem_backward_applies(x, _largest(size), env_stride, padding_mode, groups):
        return (None, *_stem_backward(grad_out, x, raw_sigma, weight, size, need_w, ctx.bias_shape, need_b,
                                      (stride, padding, dilation)), *tail)
    smoothed = _envelope(x, raw_sigma, size, env_stride, padding_mode, impl)
    grad_s, grad_w, grad_b = torch.ops.aten.convolution_backward(
        _in_layout_of(grad_out, smoothed), smoothed, weight, ctx.bias_shape,
        list(stride), list(padding), list(dilation), False, [0] * dims, groups, [need_x or need_raw, need_w, need_b])
    grad_x = grad_raw = None
    if need_x or need_raw:
        grad_x, grad_raw = _envelope_backward(grad_s, x, raw_sigma, size, env_stride, padding_mode, impl, need_x,
                                              need_raw)
    return ((grad_x if need_x else None), (grad_raw if need_raw else None),
            (_like(grad_w, weight) if need_w else None), (grad_b if need_b else None), *tail)


def _conv_jvp(ctx, x_t, raw_t, weight_t, bias_t, *_):
    x, raw_sigma, weight = ctx.saved_tensors
    size, env_stride, padding_mode, impl, stride, padding, dilation, groups = ctx.config
    tangent = None
    if x_t is not None or raw_t is not None:
        smoothed_t = _envelope_tangent(x, raw_sigma, x_t, raw_t, size, env_stride, padding_mode, impl)
        tangent = CONV[x.dim()](smoothed_t, weight, None, stride, padding, dilation, groups)
    if weight_t is not None:
        smoothed = _envelope(x, raw_sigma, size, env_stride, padding_mode, impl)
        part = CONV[x.dim()](smoothed, weight_t, None, stride, padding, dilation, groups)
        tangent = part if tangent is None else tangent + part
    if bias_t is not None:
        part = bias_t.view(1, -1, *([1] * (x.dim() - 2)))
        tangent = part.expand(ctx.out_shape).clone() if tangent is None else tangent + part
    return tangent


def _in_layout_of(t: Tensor, like: Tensor) -> Tensor:
    """``t`` in ``like``'s memory format, for the fast convolution kernels (under vmap, as is)."""
    try:
        return t.contiguous(memory_format=memory_format(like))
    except RuntimeError:  # vmap's tensors take no memory format
        return t


def _like(grad: Tensor, param: Tensor) -> Tensor:
    """``grad`` in ``param``'s strides (DDP's gradient buckets expect the parameter's layout)."""
    try:
        return grad if grad.stride() == param.stride() else torch.empty_like(param).copy_(grad)
    except RuntimeError:  # a per-sample gradient under vmap: larger than param, and without strides
        return grad


def _stem_backward(grad_out, x, raw_sigma, weight, size, need_w, bias_shape, need_b, conv_args):
    r"""Gradients of a few-channel envelope + conv without the conv's input gradient.

    The conv is linear in its input and in its weight, so with :math:`D_c = \partial\mathbf
    g_c/\partial\tilde\sigma_c * X_c` (the envelope's derivative applied to channel c),
    :math:`\partial L/\partial\tilde\sigma_c = \langle \partial L/\partial Y, \mathbf F_{:,c} * D_c
    \rangle = \langle \mathbf F_{:,c}, G_{:,c}\rangle`, where :math:`G` is the weight gradient the conv
    would have for input :math:`D`. Both weight gradients come from one backward-weight call on
    the channels ``[smoothed, D]``; the conv's backward-data pass, which autograd would run and
    which costs about 5x its weight gradient at a ResNet stem in oneDNN, is skipped. Zero padding.
    """
    n, c = x.shape[:2]
    dims = x.dim() - 2
    kernels, dkernels = envelope_kernels(raw_sigma, size, x, derivative=True)  # a (C, k) kernel per axis
    kernels = [k.to(x.dtype).repeat(n, 1) for k in kernels]
    dkernels = [d.to(x.dtype).repeat(n, 1) for d in dkernels]
    flat = x.contiguous().view(1, n * c, *x.shape[2:])  # batch folded into channels: fast grouped 1-D passes
    ones = [1] * dims
    inputs = composite.pass_inputs(flat, kernels, ones, "zeros")
    smoothed = composite.pass1d(inputs[-1], kernels[0], 2, "zeros").view(x.shape)
    # one sigma for every axis: one derivative, the sum over the axes
    derivs = composite.derivative_passes(flat, inputs, kernels, dkernels, ones, "zeros", raw_sigma.dim() == 2)
    deriv = torch.cat([d.view(x.shape) for d in derivs], 1)
    both = _in_layout_of(torch.cat([smoothed, deriv], 1), grad_out)
    copies = 1 + len(derivs)
    _, grad_all, grad_b = torch.ops.aten.convolution_backward(
        grad_out, both, weight.repeat(1, copies, *([1] * dims)), bias_shape, list(conv_args[0]), list(conv_args[1]),
        list(conv_args[2]), False, [0] * dims, 1, [False, True, need_b])
    reduce = (0, *range(2, weight.dim()))
    columns = [(weight.double() * grad_all[:, c * (1 + a):c * (2 + a)].double()).sum(reduce)
               for a in range(len(derivs))]
    grad_raw = (columns[0] if raw_sigma.dim() == 1 else torch.stack(columns, 1)).to(raw_sigma.dtype)
    if raw_sigma.shape[0] == 1 and c > 1:  # one sigma (per axis) shared by the channels
        grad_raw = grad_raw.sum(0, keepdim=True)
    grad_w = _like(grad_all[:, :c], weight) if need_w else None
    return grad_raw, grad_w, (grad_b if need_b else None)


# ---- vmap: the vmapped dimension folded into the batch, or into the channels ------------------------------

def _batch_first(t: Tensor, dim, size: int) -> Tensor:
    """``t`` with its vmapped dimension first, expanded to ``size`` when it has none."""
    return t.unsqueeze(0).expand(size, *t.shape) if dim is None else t.movedim(dim, 0)


def _fold_channels(x: Tensor, x_dim, size: int) -> Tensor:
    """(B, N, C, *spatial) -> (N, B*C, *spatial): each vmapped sample's channels side by side."""
    x = _batch_first(x, x_dim, size)
    return x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[3:])


def _unfold_channels(y: Tensor, size: int) -> Tensor:
    """(N, B*C, h, w) -> (N, B, C, h, w); the vmapped dimension is then 1."""
    return y.view(y.shape[0], size, -1, *y.shape[2:])


def _fold_sigma(raw_sigma: Tensor, raw_dim, size: int, channels: int) -> Tensor:
    """(B, C or 1[, n]) -> (B*C[, n]): each vmapped sample's sigmas for its channels, as :func:`_fold_channels`."""
    raw = _batch_first(raw_sigma, raw_dim, size)
    return raw.expand(size, channels, *raw.shape[2:]).reshape(size * channels, *raw.shape[2:])


@torch.library.register_vmap("envconv::envelope")
def _envelope_vmap(info, in_dims, x, raw_sigma, size, stride, padding_mode, impl, axis_sizes=None):
    x_dim, raw_dim = in_dims[:2]
    b = info.batch_size
    if raw_dim is None:  # one sigma for all samples: the samples are more batch
        x = _batch_first(x, x_dim, b)
        y = apply("envelope", x.flatten(0, 1), raw_sigma, size, stride, padding_mode, impl, axis_sizes)
        return y.unflatten(0, (b, -1)), 0
    channels = x.shape[-len(stride) - 1]
    y = apply("envelope", _fold_channels(x, x_dim, b), _fold_sigma(raw_sigma, raw_dim, b, channels), size, stride,
              padding_mode, impl, axis_sizes)
    return _unfold_channels(y, b), 1


@torch.library.register_vmap("envconv::envelope_backward")
def _envelope_backward_vmap(info, in_dims, grad, x, raw_sigma, size, stride, padding_mode, impl, need_x, need_sigma,
                            axis_sizes=None):
    grad_dim, x_dim, raw_dim = in_dims[:3]
    b = info.batch_size
    if raw_dim is None and not need_sigma:
        grad, x = _batch_first(grad, grad_dim, b), _batch_first(x, x_dim, b)
        grad_x, grad_raw = apply("envelope_backward", grad.flatten(0, 1), x.flatten(0, 1), raw_sigma, size, stride,
                                 padding_mode, impl, need_x, False, axis_sizes)
        return (grad_x.unflatten(0, (b, -1)), grad_raw), (0, None)
    # a sigma gradient per sample: each sample's channels get their own sigma
    channels = x.shape[-len(stride) - 1]
    grad_x, grad_raw = apply("envelope_backward", _fold_channels(grad, grad_dim, b), _fold_channels(x, x_dim, b),
                             _fold_sigma(raw_sigma, raw_dim, b, channels), size, stride, padding_mode, impl, need_x,
                             need_sigma, axis_sizes)
    if need_x:
        grad_x = _unfold_channels(grad_x, b)
    if need_sigma:
        grad_raw = grad_raw.view(b, channels, *grad_raw.shape[1:])
        if _batch_first(raw_sigma, raw_dim, b).shape[1] != channels:  # a sigma shared by the channels
            grad_raw = grad_raw.sum(1, keepdim=True)
    return (grad_x, grad_raw), (1 if need_x else None, 0 if need_sigma else None)


@torch.library.register_vmap("envconv::envelope_conv")
def _conv_vmap(info, in_dims, x, raw_sigma, weight, bias, size, env_stride, padding_mode, impl, stride, padding,
               dilation, groups, axis_sizes=None):
    x_dim, raw_dim, weight_dim, bias_dim = in_dims[:4]
    b = info.batch_size
    rest = (size, env_stride, padding_mode, impl, stride, padding, dilation)
    if raw_dim is None and weight_dim is None and bias_dim is None:
        x = _batch_first(x, x_dim, b)
        y = apply("envelope_conv", x.flatten(0, 1), raw_sigma, weight, bias, *rest, groups, axis_sizes)
        return y.unflatten(0, (b, -1)), 0
    # per-sample parameters: the samples become groups of one grouped convolution
    channels = x.shape[-(len(stride) + 1)]
    weight = _batch_first(weight, weight_dim, b).flatten(0, 1)
    bias = None if bias is None else _batch_first(bias, bias_dim, b).flatten(0, 1)
    y = apply("envelope_conv", _fold_channels(x, x_dim, b), _fold_sigma(raw_sigma, raw_dim, b, channels), weight,
              bias, *rest, groups * b, axis_sizes)
    return _unfold_channels(y, b), 1


# ---- registration ----------------------------------------------------------------------------------------

#: name -> (the op's autograd.Function, how many tensor arguments it starts with).
_FUNCTIONS = {}


class _Options:
    """An op's non-tensor arguments as one opaque Function input (vmap's generated rule would flatten lists)."""

    def __init__(self, values):
        self.values = values


def _register(name: str, tensors: int, setup_context, backward, jvp) -> None:
    """Register ``setup_context`` / ``backward`` (and ``jvp``) as the autograd of ``torch.ops.envconv.<name>``.

    The op's first ``tensors`` arguments are tensors (or ``None``); the Function takes them and
    the rest as one :class:`_Options`.
    """
    torch.library.register_autograd(f"envconv::{name}", backward, setup_context=setup_context)

    def op_args(inputs):
        return (*inputs[:tensors], *inputs[tensors].values)

    _FUNCTIONS[name] = type(f"{name}_function", (torch.autograd.Function,), {
        "generate_vmap_rule": True,  # by the ops' own vmap rules, as they run inside
        "forward": staticmethod(lambda *inputs: apply(name, *op_args(inputs))),  # one transform level down
        "setup_context": staticmethod(lambda ctx, inputs, output: setup_context(ctx, op_args(inputs), output)),
        "backward": staticmethod(lambda ctx, *grads: (*backward(ctx, *grads)[:tensors], None)),
        "jvp": staticmethod(lambda ctx, *tangents: jvp(ctx, *tangents[:tensors])),
    }), tensors


def _differentiating(args) -> bool:
    """Whether a call records a gradient (autograd, or a reverse-mode torch.func transform) or a tangent."""
    tensors = [a for a in args if isinstance(a, Tensor)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return True
    return has_tangent(tensors)


def apply(name: str, *args):
    """``torch.ops.envconv.<name>(*args)``, differentiable in every mode and under every :mod:`torch.func` transform."""
    args = autocast_args(name, args)  # before the Function saves them, as the dispatcher's autocast key would
    # a trace or torch.compile records the op itself (its autograd is registered)
    if not (torch.jit.is_tracing() or torch.compiler.is_compiling()) and _differentiating(args):
        function, tensors = _FUNCTIONS[name]
        return function.apply(*args[:tensors], _Options(args[tensors:]))
    return getattr(torch.ops.envconv, name)(*args)


_register("envelope", 2, _envelope_setup, _envelope_grad, _envelope_jvp)
_register("envelope_backward", 3, _envelope_backward_setup, _envelope_backward_grad, _envelope_backward_jvp)
_register("envelope_conv", 4, _conv_setup, _conv_grad, _conv_jvp)
