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


@pytest.mark.parametrize("impl, stride, shared", list(itertools.product(CPU_IMPLS, [1, 2], [False, True])))
def test_envelope_double_backward_and_forward_ad_match_finite_differences(impl, stride, shared):
    x, raw = make(shared=shared)
    f = lambda x, r: Fn.gaussian_envelope(x, r, 5, stride=stride, impl=impl)  # noqa: E731
    args = (x.requires_grad_(), raw.requires_grad_())
    assert gradcheck(f, args, check_forward_ad=True)
    assert gradgradcheck(f, args, check_fwd_over_rev=True)


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_double_backward_in_every_padding_mode(padding_mode):
    x, raw = make(shape=(1, 2, 6, 5))
    f = lambda x, r: Fn.gaussian_envelope(x, r, 5, padding_mode, stride=(2, 1))  # noqa: E731
    args = (x.requires_grad_(), raw.requires_grad_())
    assert gradcheck(f, args, check_forward_ad=True)
    assert gradgradcheck(f, args, check_fwd_over_rev=True)


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
