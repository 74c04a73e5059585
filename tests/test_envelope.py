"""GaussianEnvelope: parameters, sigma, fixed envelopes, sizes, errors."""

import math

import numpy as np
import pytest
import torch

import reference as ref
from envconv import GaussianEnvelope


def test_parameter_shapes_and_paper_init():
    env = GaussianEnvelope(5)
    assert isinstance(env.raw_sigma, torch.nn.Parameter) and env.raw_sigma.shape == (5,)
    assert env.raw_sigma.eq(0).all()
    # raw 0 -> sigma^2 = log 2 (paper's initialisation)
    np.testing.assert_allclose(env.sigma.detach().numpy(), math.sqrt(math.log(2)), rtol=1e-7)
    shared = GaussianEnvelope(5, shared=True, init=1.5)
    assert shared.raw_sigma.shape == (1,)
    assert shared.sigma.shape == (5,)
    np.testing.assert_allclose(shared.sigma.detach().numpy(), math.sqrt(math.log1p(math.exp(1.5))), rtol=1e-7)


def test_forward_matches_scipy_per_channel_and_shared():
    x = torch.randn(2, 3, 10, 9, dtype=torch.float64)
    env = GaussianEnvelope(3, size=7, dtype=torch.float64)
    with torch.no_grad():
        env.raw_sigma.copy_(torch.tensor([-1.0, 0.5, 2.0]))
    np.testing.assert_allclose(env(x).detach().numpy(), ref.envelope(x.numpy(), [-1.0, 0.5, 2.0], 7), atol=1e-10)
    shared = GaussianEnvelope(3, size=5, shared=True, init=0.8, dtype=torch.float64, padding_mode="reflect")
    np.testing.assert_allclose(
        shared(x).detach().numpy(), ref.envelope(x.numpy(), [0.8], 5, "reflect"), atol=1e-10
    )


def test_unbatched_input_matches_batched():
    env = GaussianEnvelope(3, init=0.4)
    x = torch.randn(3, 8, 8)
    torch.testing.assert_close(env(x), env(x[None])[0])


def test_fixed_sigma_is_a_buffer_and_exact():
    env = GaussianEnvelope.fixed(4, sigma=0.7, size=9, dtype=torch.float64)
    assert not env.learnable and list(env.parameters()) == []
    assert "raw_sigma" in dict(env.named_buffers())
    np.testing.assert_allclose(env.sigma.numpy(), 0.7, rtol=1e-12)
    k = ref.kernel1d(float(env.raw_sigma), 9)[0]
    w = np.exp(-np.arange(-4, 5) ** 2 / (2 * 0.49))
    np.testing.assert_allclose(k, w / w.sum(), atol=1e-14)
    per_channel = GaussianEnvelope.fixed(3, sigma=[0.3, 1.0, 2.0], dtype=torch.float64)
    np.testing.assert_allclose(per_channel.sigma.numpy(), [0.3, 1.0, 2.0], rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixed_sigma_zero_is_identity_without_nan(dtype):
    env = GaussianEnvelope.fixed(3, sigma=0.0, size=9, dtype=dtype)
    x = torch.randn(2, 3, 6, 6, dtype=dtype, requires_grad=True)
    y = env(x)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert env.sigma.eq(0).all()


def test_size_change_keeps_parameters():
    env = GaussianEnvelope(3, size=9, init=0.3)
    before = {k: v.clone() for k, v in env.state_dict().items()}
    env.size = 3
    assert env.size == 3 and env.kernel1d().shape == (3, 3)
    after = env.state_dict()
    assert before.keys() == after.keys() and torch.equal(before["raw_sigma"], after["raw_sigma"])
    assert (before["_extra_state"].tolist(), after["_extra_state"].tolist()) == ([1, 9, 1, 0, 3, 2], [1, 3, 1, 0, 3, 2])
    with pytest.raises(ValueError, match="odd"):
        env.size = 4


def test_kernel2d_is_outer_product_summing_to_one():
    env = GaussianEnvelope(2, size=5, init=-0.3, dtype=torch.float64)
    k2 = env.kernel2d().detach().numpy()
    k1 = ref.kernel1d([-0.3], 5)[0]
    np.testing.assert_allclose(k2[1], np.outer(k1, k1), atol=1e-15)
    np.testing.assert_allclose(k2.sum(axis=(1, 2)), 1.0, atol=1e-14)


def test_state_dict_round_trip():
    a = GaussianEnvelope(6, init=0.0)
    with torch.no_grad():
        a.raw_sigma.uniform_(-2, 2)
    b = GaussianEnvelope(6)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 6, 12, 12)
    assert torch.equal(a(x), b(x))


def test_repr_names_size_and_mode():
    assert repr(GaussianEnvelope(4, 9)) == "GaussianEnvelope(4, size=9, sigma=per-channel)"
    assert "sigma=shared" in repr(GaussianEnvelope(4, shared=True))
    assert "learnable=False" in repr(GaussianEnvelope.fixed(4, 0.5))


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        GaussianEnvelope(3, size=8)
    with pytest.raises(ValueError, match="size"):
        GaussianEnvelope(3, size=0)
    with pytest.raises(ValueError, match="padding_mode"):
        GaussianEnvelope(3, padding_mode="mirror")
    with pytest.raises(ValueError, match="init"):
        GaussianEnvelope(3, init=float("nan"))
    with pytest.raises(ValueError, match="init"):
        GaussianEnvelope(3, init=float("inf"))
    with pytest.raises(ValueError, match="channels"):
        GaussianEnvelope(0)
    with pytest.raises(TypeError, match="channels"):
        GaussianEnvelope(3.0)
    with pytest.raises(ValueError, match="one per channel"):
        GaussianEnvelope.fixed(3, sigma=[0.1, 0.2])
    env = GaussianEnvelope(3)
    with pytest.raises(ValueError, match="3 channels but the input has 4"):
        env(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="dims"):
        env(torch.randn(8, 8))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int32, torch.int64, torch.bool])
@pytest.mark.parametrize("impl", ["auto", "cpp"])  # the check runs before any kernel: a forced one does not skip it
def test_integer_input_is_refused_not_rounded_to_zero(dtype, impl):
    env = GaussianEnvelope(3, 5)
    env.impl = impl
    x = torch.full((1, 3, 8, 8), 1, dtype=dtype)
    with pytest.raises(TypeError, match=f"floating-point tensor, got {dtype}"):
        env(x)
    with pytest.raises(TypeError, match="floating point"):  # the op itself, called directly
        torch.ops.envconv.envelope(x, env.raw_sigma, 5, [1, 1], "zeros", impl)


def test_sigma_zero_is_the_identity_for_finite_input_and_spreads_nan_from_inf_as_documented():
    env = GaussianEnvelope.fixed(1, sigma=0.0, size=5)
    x = torch.randn(1, 1, 9, 9, dtype=torch.float64) * 1e300
    assert torch.equal(env(x), x)  # exact, even for huge values
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = float("inf")
    y = env(x)
    assert y[0, 0, 4, 4] == float("inf")
    assert int(torch.isnan(y).sum()) == 24  # 0 * inf = NaN at the other 24 taps of the 5x5 window
    assert "0 * inf" in GaussianEnvelope.fixed.__doc__


def test_a_sigma_per_axis_module_fixed_constructor_kernels_and_errors():
    env = GaussianEnvelope(3, size=5, spatial_dims=3, per_axis=True, init=0.5)
    assert env.raw_sigma.shape == (3, 3) and env.per_axis and env.sigma.shape == (3, 3)
    assert "sigma=per-channel per-axis" in repr(env)
    shared = GaussianEnvelope(3, size=5, shared=True, per_axis=True)
    assert shared.raw_sigma.shape == (1, 2) and shared.sigma.shape == (3, 2)
    fixed = GaussianEnvelope.fixed(2, [[0.3, 1.0], [0.5, 0.7]], 5, per_axis=True)
    np.testing.assert_allclose(fixed.sigma.numpy(), [[0.3, 1.0], [0.5, 0.7]], rtol=1e-6)
    # each axis's 1-D kernel, and the 2-D envelope as their outer product
    np.testing.assert_allclose(fixed.kernel1d(1)[0].numpy(), ref.kernel1d(np.log(np.expm1(1.0)), 5)[0],
                               rtol=1e-6)
    assert torch.equal(fixed.kernel2d(), fixed.kernel1d(0)[:, :, None] * fixed.kernel1d(1)[:, None, :])
    x = torch.randn(2, 2, 8, 9)
    y = fixed(x)
    np.testing.assert_allclose(y.numpy(), ref.envelope(x, fixed.raw_sigma, 5), rtol=2e-6, atol=2e-6)
    with pytest.raises(ValueError, match=r"per-axis sigma must have 2 entries .* or shape \(2, 2\)"):
        GaussianEnvelope.fixed(2, [0.1, 0.2, 0.3], per_axis=True)
    with pytest.raises(ValueError, match="kernel2d is the envelope of a 2-D input"):
        GaussianEnvelope(3, spatial_dims=3).kernel2d()
    # a per-axis state dict does not load into a per-channel envelope (torch names the shapes)
    with pytest.raises(RuntimeError, match="size mismatch for raw_sigma"):
        GaussianEnvelope(3, size=5, spatial_dims=3).load_state_dict(env.state_dict())


def test_a_size_per_axis_module_kernels_record_and_errors():
    env = GaussianEnvelope(2, size=(3, 9, 5), spatial_dims=3, per_axis=True, init=0.4)
    assert env.size == (3, 9, 5) and env.sizes == (3, 9, 5) and "size=(3, 9, 5)" in repr(env)
    assert GaussianEnvelope(2, size=(5, 5)).size == 5  # equal sizes read back as one int
    assert [env.kernel1d(a).shape[1] for a in range(3)] == [3, 9, 5]
    np.testing.assert_allclose(env.kernel1d(0)[0].detach().numpy(), ref.kernel1d(0.4, 3)[0], rtol=1e-6)
    x = torch.randn(2, 2, 6, 11, 7)
    np.testing.assert_allclose(env(x).detach().numpy(), ref.envelope(x, env.raw_sigma.detach(), (3, 9, 5)),
                               rtol=2e-6, atol=2e-6)
    flat = GaussianEnvelope.fixed(2, 0.8, (1, 7))
    assert flat.kernel2d().shape == (2, 1, 7)
    # the record: format 2 with each axis's size; it loads into the same sizes, refuses others
    assert env.get_extra_state().tolist() == [2, 9, 1, 0, 2, 3, 3, 9, 5]
    other = GaussianEnvelope(2, size=(3, 9, 5), spatial_dims=3, per_axis=True)
    other.load_state_dict(env.state_dict())
    assert torch.equal(other(x), env(x))
    with pytest.raises(RuntimeError, match=r"size k_g=\(3, 9, 5\), this one has k_g=9"):
        GaussianEnvelope(2, size=9, spatial_dims=3, per_axis=True).load_state_dict(env.state_dict())
    assert GaussianEnvelope(2, size=9).get_extra_state()[0] == 1  # one size: the format envconv always wrote
    with pytest.raises(ValueError, match="one per spatial axis"):
        GaussianEnvelope(2, size=(3, 5), spatial_dims=3)
    with pytest.raises(ValueError, match="odd positive int"):
        env.size = (3, 4, 5)
    assert env.size == (3, 9, 5)  # a refused size changes nothing
    from envconv.envelope import read_envelope_record
    for corrupt in ([2, 9, 1, 0, 2, 3, 3, 9, 4], [2, 7, 1, 0, 2, 3, 3, 9, 5], [2, 9, 1, 0, 2, 2, 3, 9, 5]):
        with pytest.raises(ValueError, match="corrupt"):
            read_envelope_record(torch.tensor(corrupt))


def test_shrink_to_a_size_per_axis_and_automatically_per_axis():
    from envconv import DisentangledConv2d, DisentangledConv3d, shrink
    model = torch.nn.Sequential(DisentangledConv3d(2, 4, 3, envelope_size=9), DisentangledConv3d(4, 4, 1))
    assert [m.envelope_size for m in shrink(model, (1, 3, 3))] == [(1, 3, 3), (1, 3, 3)]
    mixed = torch.nn.Sequential(DisentangledConv3d(2, 4, 3), DisentangledConv2d(4, 4, 3))
    with pytest.raises(ValueError, match="for a 2-D envelope"):
        shrink(mixed, (1, 3, 3))
    assert [m.envelope_size for m in mixed] == [9, 9]  # checked before any envelope changed
    # one sigma per channel, a size per axis: each axis's smallest size keeping (1 - eps)^(1/2) of its mass
    env = GaussianEnvelope.fixed(1, 1.0, (9, 5))
    eps = 0.05

    def smallest(size):
        kernel = ref.kernel1d(np.log(np.expm1(1.0)), size)[0]
        return min(t for t in range(1, size + 1, 2)
                   if kernel[size // 2 - t // 2: size // 2 + t // 2 + 1].sum() >= (1 - eps) ** 0.5)

    assert shrink(env, "auto", eps=eps).sizes == (smallest(9), smallest(5))


def test_a_3d_envelope_keeps_the_layout_records_its_form_and_counts_its_flops():
    from envconv.ops.flop_formulas import envelope_flops

    env = GaussianEnvelope(4, size=5, init=0.3, spatial_dims=3)
    x = torch.randn(2, 4, 6, 7, 8).contiguous(memory_format=torch.channels_last_3d)
    y = env(x)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)  # the layout is kept, as in 2-D
    np.testing.assert_allclose(y.detach().numpy(), ref.envelope(x, env.raw_sigma.detach(), 5), rtol=2e-6, atol=2e-6)
    assert env.get_extra_state().tolist() == [1, 5, 1, 0, 4, 3]
    with pytest.raises(RuntimeError, match="the weights are of a 2-D envelope, this one is 3-D"):
        env.load_state_dict(GaussianEnvelope(4, size=5).state_dict())
    assert "spatial_dims=3" in repr(env)
    # FLOPs: one pass per axis, last axis first, each k multiply-adds per output (2 FLOPs each)
    n, c, d, h, w = 2, 4, 6, 7, 8
    passes = n * c * d * h * 4 + n * c * d * 4 * 4 + n * c * 3 * 4 * 4  # stride 2: 8 -> 4, 7 -> 4, 6 -> 3
    assert envelope_flops((n, c, d, h, w), 5, [2, 2, 2]) == 2 * 5 * passes


def test_automatic_shrinking_counts_the_mass_in_every_dimension():
    from envconv import shrink
    from envconv.kernels import gaussian_kernel1d

    raw = 0.0  # sigma 0.83: 5 central taps of 9 hold m = 0.99853 of the 1-D kernel
    m = float(gaussian_kernel1d(torch.tensor([raw], dtype=torch.float64), 9)[0, 2:7].sum())
    sizes = {}
    for dims in (1, 2, 3):
        env = GaussianEnvelope(1, 9, init=raw, spatial_dims=dims)
        sizes[dims] = shrink(env, "auto", eps=1 - m ** 2 + 1e-9).size  # the 2-D mass of 5 taps, just
    assert sizes == {1: 5, 2: 5, 3: 7}  # 1-D keeps m > m^2 with 5; 3-D needs m^3 >= m^2: more taps
