"""Every autograd transform through the ops: double backward, forward AD and torch.func.

Two independent references: finite differences (``gradcheck`` / ``gradgradcheck``, which also
check forward mode and forward-over-reverse), and the same function built from plain ATen ops
(:func:`envconv.ops.export.envelope_decomposed`), which PyTorch's own derivative formulas
differentiate. Per-sample gradients are checked against a loop of ordinary backward passes.
"""

import itertools

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from op_cases import assert_per_sample_gradients_equal_a_loop, needs, raw_sigma
from torch.autograd import gradcheck, gradgradcheck

from envconv import DisentangledConv2d
from envconv import functional as Fn
from envconv.ops import cpu
from envconv.ops.export import envelope_decomposed

DOUBLE = dict(dtype=torch.float64)
CPU_IMPLS = ["separable", "full"] + (["cpp"] if cpu.available() else [])


def make(shape=(2, 3, 7, 6), shared=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen, **DOUBLE)
    raw = torch.randn(1 if shared else shape[1], generator=gen, **DOUBLE) * 0.8
    return x, raw


SMALL = {1: (2, 2, 7), 2: (1, 2, 5, 6), 3: (1, 2, 3, 4, 5)}
AXIS_SIZES = {1: (5,), 2: (3, 5), 3: (1, 3, 5)}
# (sigma, size, padding mode, stride): every form of each; "axes" is AXIS_SIZES
ROWS = [("channel", 3, "zeros", 1), ("shared", 5, "reflect", 2), ("axis", "axes", "circular", 1),
        ("shared-axis", 3, "replicate", "mixed")]
GRID = [(impl, dims, sigma, size, "zeros" if impl in ("cpp", "triton") else mode, stride)
        for impl in ("separable", "full", "cpp", "triton") for dims in ((2,) if impl == "full" else (1, 2, 3))
        for sigma, size, mode, stride in ROWS]


@pytest.mark.parametrize("impl, dims, sigma, size, mode, stride", GRID)
def test_gradients_second_order_and_opcheck_of_every_kernel(impl, dims, sigma, size, mode, stride):
    """Finite differences for backward, forward AD and double backward; opcheck for the registrations."""
    needs(impl, mode)
    gen = torch.Generator().manual_seed(dims)
    size = AXIS_SIZES[dims] if size == "axes" else size
    strides = [stride] * dims if isinstance(stride, int) else [1, 2, 3][-dims:]
    if impl == "triton":  # the interpreter is slow: stride 2 leaves fewer outputs for gradcheck to go through
        strides = [2] * dims
    x = torch.randn(SMALL[dims], generator=gen, **DOUBLE).requires_grad_()
    raw = raw_sigma(2, dims, sigma, torch.float64, gen).requires_grad_()

    def f(a, b):
        return Fn.gaussian_envelope(a, b, size, mode, strides, impl, spatial_dims=dims)

    if impl == "triton":  # the interpreter is slow; double backward and forward AD run the composite passes
        assert gradcheck(f, (x, raw))
    else:
        assert gradcheck(f, (x, raw), check_forward_ad=True)
        assert gradgradcheck(f, (x, raw), check_fwd_over_rev=True)
    largest, axis_sizes = (size, []) if isinstance(size, int) else (max(size), [list(size)])
    x32, raw32 = x.detach().float(), raw.detach().float()
    torch.library.opcheck(torch.ops.envconv.envelope.default, (x32, raw32, largest, strides, mode, impl, *axis_sizes))
    grad = torch.randn(f(x, raw).shape, generator=gen)
    for need in ((True, True),) if impl == "triton" else ((True, True), (False, True)):
        torch.library.opcheck(torch.ops.envconv.envelope_backward.default,
                              (grad, x32, raw32, largest, strides, mode, impl, *need, *axis_sizes))


@pytest.mark.parametrize("impl, env_stride", list(itertools.product(CPU_IMPLS, [1, 2])))
@pytest.mark.parametrize("channels", [3, 5])  # 3: the stem's forward-conv backward route
def test_envelope_conv2d_double_backward_and_forward_ad(impl, env_stride, channels):
    x, raw = make(shape=(1, channels, 5, 5))
    weight = torch.randn(2, channels, 3, 3, generator=torch.Generator().manual_seed(2), **DOUBLE)
    bias = torch.randn(2, **DOUBLE)
    f = lambda x, r, w, b: Fn.envelope_conv2d(x, r, 5, w, b, env_stride=env_stride, padding=1, impl=impl)  # noqa: E731
    for need_x in (True, False):
        args = (x.clone().requires_grad_(need_x), raw.requires_grad_(), weight.requires_grad_(), bias.requires_grad_())
        assert gradcheck(f, args, check_forward_ad=True)
        assert gradgradcheck(f, args, check_fwd_over_rev=True)


def test_a_gradient_penalty_trains_like_plain_aten():
    # R1 / WGAN-GP style: the penalty is the squared input gradient; its parameter gradients need double backward
    x, _ = make(shape=(2, 3, 8, 8))
    layer = DisentangledConv2d(3, 4, 3, padding=1, envelope_size=5).double()
    with torch.no_grad():
        layer.envelope.raw_sigma.copy_(torch.tensor([-0.5, 0.3, 1.2]))
    params = [layer.envelope.raw_sigma, layer.weight, layer.bias]

    def penalty_grads(forward):
        inp = x.clone().requires_grad_()
        (grad_x,) = torch.autograd.grad(forward(inp).tanh().sum(), inp, create_graph=True)
        return torch.autograd.grad(grad_x.square().sum(), params)

    ours = penalty_grads(layer)
    aten = penalty_grads(lambda inp: layer._conv_forward(
        envelope_decomposed(inp, layer.envelope.raw_sigma, 5, [1, 1], "zeros"), layer.weight, layer.bias))
    for a, b in zip(ours, aten):
        assert b.abs().max() > 1e-3  # the reference is not trivially zero
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def reference_loss(x, raw, stride):
    return envelope_decomposed(x, raw, 5, [stride, stride], "zeros").sin().sum()


def our_loss(x, raw, stride):
    return Fn.gaussian_envelope(x, raw, 5, stride=stride).sin().sum()


@pytest.mark.parametrize("stride", [1, 2])
def test_torch_func_grad_jacrev_jacfwd_hessian_and_jvp_match_aten(stride):
    x, raw = make(shape=(1, 3, 7, 7))
    ours = lambda r: our_loss(x, r, stride)  # noqa: E731
    theirs = lambda r: reference_loss(x, r, stride)  # noqa: E731
    close = dict(rtol=1e-10, atol=1e-12)
    for transform in (torch.func.grad, torch.func.jacrev, torch.func.jacfwd, torch.func.hessian,
                      lambda f: torch.func.jacrev(torch.func.jacrev(f))):
        torch.testing.assert_close(transform(ours)(raw), transform(theirs)(raw), **close)
    tangent = torch.randn(3, **DOUBLE)
    _, ours_t = torch.func.jvp(ours, (raw,), (tangent,))
    _, theirs_t = torch.func.jvp(theirs, (raw,), (tangent,))
    assert theirs_t.abs() > 1e-3  # before this op had a jvp, forward mode returned exactly 0 here
    torch.testing.assert_close(ours_t, theirs_t, **close)
    # forward AD without torch.func, in the input too
    x_t = torch.randn_like(x)
    with fwAD.dual_level():
        ours_t = fwAD.unpack_dual(our_loss(fwAD.make_dual(x, x_t), fwAD.make_dual(raw, tangent), stride)).tangent
    _, theirs_t = torch.func.jvp(lambda x, r: reference_loss(x, r, stride), (x, raw), (x_t, tangent))
    torch.testing.assert_close(ours_t, theirs_t, **close)


@pytest.mark.parametrize("channels_last", [False, True])
def test_per_sample_gradients_with_vmap_equal_a_loop(channels_last):
    # Opacus-style DP-SGD: vmap(grad(loss of one sample)) over the batch
    gen = torch.Generator().manual_seed(3)
    model = torch.nn.Sequential(
        DisentangledConv2d(3, 6, 3, stride=2, padding=1, envelope_size=5),  # a stem: few channels
        torch.nn.ReLU(),
        DisentangledConv2d(6, 8, 3, stride=2, padding=1, envelope_size=3),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, **DOUBLE) * 0.5)
    x = torch.randn(5, 3, 9, 9, generator=gen, **DOUBLE)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 4, (5,), generator=gen)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(params, xi, ti):
        out = torch.func.functional_call(model, params, (xi[None],))
        return torch.nn.functional.cross_entropy(out, ti[None])

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, target)
    for i in range(5):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i:i + 1]), target[i:i + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad, rtol=1e-10, atol=1e-12)
    assert any("raw_sigma" in name for name in per_sample)


def test_vmap_over_sigmas_and_weights_equals_a_loop():
    # the vmapped dimension on the parameters: the samples' channels are folded side by side
    x, _ = make(shape=(2, 3, 7, 7))
    gen = torch.Generator().manual_seed(4)
    raws = torch.randn(4, 3, generator=gen, **DOUBLE)
    weights = torch.randn(4, 5, 3, 3, 3, generator=gen, **DOUBLE)
    biases = torch.randn(4, 5, generator=gen, **DOUBLE)
    env = lambda r: Fn.gaussian_envelope(x, r, 5, stride=2)  # noqa: E731
    torch.testing.assert_close(torch.func.vmap(env)(raws), torch.stack([env(r) for r in raws]))
    conv = lambda r, w, b: Fn.envelope_conv2d(x, r, 5, w, b, padding=1)  # noqa: E731
    torch.testing.assert_close(torch.func.vmap(conv)(raws, weights, biases),
                               torch.stack([conv(*a) for a in zip(raws, weights, biases)]))
    shared = torch.func.vmap(lambda r: Fn.gaussian_envelope(x, r, 5))(raws[:, :1])
    torch.testing.assert_close(shared, torch.stack([Fn.gaussian_envelope(x, r, 5) for r in raws[:, :1]]))
    # and the sigma gradient of a shared sigma, per vmapped sample
    grads = torch.func.vmap(torch.func.grad(lambda r: our_loss(x, r, 1)))(raws[:, :1])
    loops = torch.stack([torch.func.grad(lambda r: reference_loss(x, r, 1))(r) for r in raws[:, :1]])
    torch.testing.assert_close(grads, loops, rtol=1e-10, atol=1e-12)


def test_the_ops_called_directly_refuse_forward_ad_instead_of_a_zero_tangent():
    # the ops' registered autograd has no jvp: a dual input is refused by name, never silently zero
    x, raw = make()
    weight = torch.randn(4, 3, 3, 3, **DOUBLE)
    with fwAD.dual_level():
        dual_x = fwAD.make_dual(x, torch.ones_like(x))
        with pytest.raises(RuntimeError, match="envconv.functional"):
            torch.ops.envconv.envelope(dual_x, raw, 5, [1, 1], "zeros", "auto")
        with pytest.raises(RuntimeError, match="envconv.functional"):
            torch.ops.envconv.envelope_conv(x, raw, fwAD.make_dual(weight, torch.ones_like(weight)), None, 5, [1, 1],
                                            "zeros", "auto", [1, 1], [1, 1], [1, 1], 1)
        # the functional's call of the same op carries the tangent: exactly the envelope of the tangent (linear in x)
        tangent = fwAD.unpack_dual(Fn.gaussian_envelope(dual_x, raw, 5)).tangent
        torch.testing.assert_close(tangent, envelope_decomposed(torch.ones_like(x), raw, 5, [1, 1], "zeros"))


def test_the_ops_called_directly_have_reverse_mode_and_double_backward():
    # torch.library.register_autograd: what torch.compile, export and trace record
    x, raw = make()
    x.requires_grad_(True)
    raw.requires_grad_(True)
    assert gradcheck(lambda x, r: torch.ops.envconv.envelope(x, r, 5, [2, 2], "zeros", "auto"), (x, raw))
    assert gradgradcheck(lambda x, r: torch.ops.envconv.envelope(x, r, 5, [2, 2], "zeros", "auto"), (x, raw))


def test_vmap_per_sample_gradients_in_1d_and_3d_equal_a_loop():
    def loss_1d(r, xi):
        return Fn.gaussian_envelope(xi[None], r, 5, "reflect", 2, spatial_dims=1).square().sum()

    assert_per_sample_gradients_equal_a_loop(loss_1d, torch.tensor([0.1, -0.4, 0.9], **DOUBLE),
                                             torch.randn(4, 3, 10, **DOUBLE))

    def loss_3d(r, xi):
        return Fn.gaussian_envelope(xi[None], r, 3, "zeros", 2, spatial_dims=3).square().sum()

    raw, x = torch.randn(3, 3, **DOUBLE), torch.randn(3, 3, 4, 5, 6, **DOUBLE)  # a sigma per channel and axis
    assert_per_sample_gradients_equal_a_loop(loss_3d, raw, x)
    raws = torch.randn(3, 1, 3, **DOUBLE)  # a sigma per sample (vmapped raw_sigma), shared by the channels
    per_raw = torch.func.vmap(torch.func.grad(loss_3d), in_dims=(0, 0))(raws, x)
    for i in range(3):
        r = raws[i].clone().requires_grad_()
        torch.testing.assert_close(per_raw[i], torch.autograd.grad(loss_3d(r, x[i]), r)[0], rtol=1e-12, atol=1e-12)


def test_vmap_and_jvp_with_a_size_per_axis():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 2, 2, 5, 6, generator=gen, **DOUBLE)
    raw = torch.randn(3, 2, 2, generator=gen, **DOUBLE)  # a (C, n) sigma per vmapped sample

    def f(a, b):
        return Fn.gaussian_envelope(a, b, (3, 5), stride=(1, 2))

    batched = torch.func.vmap(f)(x, raw)
    torch.testing.assert_close(batched, torch.stack([f(a, b) for a, b in zip(x, raw)]))
    tangents = (torch.randn_like(x[0]), torch.randn_like(raw[0]))
    _, jvp = torch.func.jvp(f, (x[0], raw[0]), tangents)
    eps = 1e-6
    fd = (f(x[0] + eps * tangents[0], raw[0] + eps * tangents[1])
          - f(x[0] - eps * tangents[0], raw[0] - eps * tangents[1])) / (2 * eps)
    torch.testing.assert_close(jvp, fd, rtol=1e-6, atol=1e-8)
