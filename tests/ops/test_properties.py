"""Property-based tests: hypothesis draws envelope configurations and every kernel must equal the numpy reference.

Each example draws 1-3 spatial axes (batch 0-2, 1x1 maps included), one size or a size per axis,
a stride per axis, a padding mode, a form of raw_sigma (per channel, shared, per channel and axis,
per axis shared), a dtype, a layout and a kernel (``impl``), and checks the forward pass and both
gradients against ``tests/reference.py``. The suite runs the ``ci``
profile (a bounded number of examples, so ``make test`` stays fast); ``HYPOTHESIS_PROFILE=thorough
python -m pytest tests/ops/test_properties.py`` runs many more by hand (3,000 CPU examples passed on
2026-12-02). A failing example that hypothesis shrinks is to be kept as an ``@example``, a regression
test from then on; none has failed yet, so the ``@example`` cases are the edges chosen by hand (a
1x1 map under a 7-tap kernel and stride 3, circular padding of a one-row map).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from op_cases import CHANNELS_LAST, SIGMAS, assert_envelope_matches_reference, raw_sigma  # noqa: E402

from envconv.ops import cpu, dispatch  # noqa: E402

settings.register_profile("ci", max_examples=120, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# a drawn sigma may be wider than the grid's (scale 1.5): float32 gets a little more room
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=3e-5, atol=3e-5)}
SIGMA_TOL = {torch.float64: dict(rtol=1e-6, atol=1e-7), torch.float32: dict(rtol=2e-4, atol=2e-4)}
CPU_IMPLS = ["auto", "separable", "full"] + (["cpp"] if cpu.available() else [])
TRITON = dispatch.triton_unsupported(torch.zeros(1, 1, 1, 1), "zeros") is None


@st.composite
def configurations(draw, impls):
    """1-3 spatial axes (1 x 1 maps and empty batches included), one size or a size per axis, a stride per axis,
    every form of raw_sigma, every padding the kernel has and the map allows, a dtype and a layout."""
    dims = draw(st.integers(1, 3))
    impl = draw(st.sampled_from([i for i in impls if i != "full" or dims == 2]))
    spatial = tuple(draw(st.integers(1, 7)) for _ in range(dims))
    sizes = (draw(st.sampled_from([1, 3, 5, 7])),) * dims if draw(st.booleans()) else \
        tuple(draw(st.sampled_from([1, 3, 5, 7])) for _ in range(dims))
    radii = [k // 2 for k in sizes]
    modes = ["zeros"] if impl in ("cpp", "triton") else ["zeros", "replicate"] + \
        (["reflect"] if all(r < n for r, n in zip(radii, spatial)) else []) + \
        (["circular"] if all(r <= n for r, n in zip(radii, spatial)) else [])
    return {"impl": impl, "shape": (draw(st.integers(0, 2)), draw(st.integers(1, 3)), *spatial),
            "size": sizes[0] if len(set(sizes)) == 1 else sizes,
            "stride": tuple(draw(st.integers(1, 3)) for _ in range(dims)), "padding_mode": draw(st.sampled_from(modes)),
            "sigma": draw(st.sampled_from(SIGMAS)), "dtype": draw(st.sampled_from([torch.float64, torch.float32])),
            "channels_last": dims > 1 and draw(st.booleans()), "seed": draw(st.integers(0, 2 ** 16))}


def check(cfg):
    dtype, shape, dims = cfg["dtype"], cfg["shape"], len(cfg["stride"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    x = torch.randn(shape, dtype=dtype, generator=gen)
    if cfg["channels_last"]:
        x = x.contiguous(memory_format=CHANNELS_LAST[x.dim()])
    x = x.requires_grad_()
    raw = raw_sigma(shape[1], dims, cfg["sigma"], dtype, gen, scale=1.5).requires_grad_()
    assert_envelope_matches_reference(x, raw, cfg["size"], cfg["padding_mode"], list(cfg["stride"]), cfg["impl"], gen,
                                      TOL, SIGMA_TOL)


@given(configurations(CPU_IMPLS))
@example({"impl": "cpp", "shape": (1, 1, 1, 1), "size": 7, "padding_mode": "zeros", "stride": (3, 3),
          "dtype": torch.float64, "channels_last": True, "sigma": "shared", "seed": 0})
@example({"impl": "full", "shape": (2, 3, 1, 7), "size": 3, "padding_mode": "circular", "stride": (1, 2),
          "dtype": torch.float32, "channels_last": False, "sigma": "channel", "seed": 1})
@example({"impl": "cpp", "shape": (1, 2, 1, 5, 3), "size": (1, 7, 3), "stride": (1, 3, 2), "padding_mode": "zeros",
          "sigma": "axis", "dtype": torch.float64, "channels_last": True, "seed": 0})
def test_every_cpu_kernel_equals_the_reference(cfg):
    if cfg["impl"] == "cpp" and not cpu.available():
        cfg = {**cfg, "impl": "separable"}
    check(cfg)


@pytest.mark.skipif(not TRITON, reason="triton is not importable here")
@settings(max_examples=24)  # the interpreter is slow
@given(configurations(["triton"]))
def test_the_triton_kernels_equal_the_reference(cfg):
    check(cfg)


@st.composite
def backward_arguments(draw):
    """x, a gradient whose shape may differ from the envelope's output in any entry, the stride, the impl."""
    dims = draw(st.integers(1, 3))
    x_shape = [draw(st.integers(1, 3)), draw(st.integers(1, 4))] + [draw(st.integers(1, 7)) for _ in range(dims)]
    stride = [draw(st.integers(1, 3)) for _ in range(dims)]
    out = x_shape[:2] + [(n - 1) // s + 1 for n, s in zip(x_shape[2:], stride)]
    grad_shape = [draw(st.one_of(st.just(n), st.integers(1, 8))) for n in out]
    if draw(st.booleans()):  # a gradient of another rank too
        grad_shape = grad_shape[:draw(st.integers(1, len(grad_shape)))]
    impl = draw(st.sampled_from(["auto", "separable"] + (["cpp"] if cpu.available() else [])))
    return x_shape, grad_shape, out, stride, impl


@given(backward_arguments())
def test_the_backward_op_takes_exactly_the_envelopes_output_shape_as_its_gradient(args):
    x_shape, grad_shape, out, stride, impl = args
    x, grad = torch.randn(x_shape, dtype=torch.float64), torch.randn(grad_shape, dtype=torch.float64)
    raw = torch.zeros(x_shape[1], dtype=torch.float64)
    call = lambda: torch.ops.envconv.envelope_backward(grad, x, raw, 5, stride, "zeros", impl, True, True)  # noqa
    if grad_shape != out:
        with pytest.raises(RuntimeError, match="grad must be the envelope's output"):
            call()
        return
    grad_x, grad_raw = call()  # the reference: the adjoint of the forward, by autograd through the ATen form
    xr, rr = x.clone().requires_grad_(), raw.clone().requires_grad_()
    from envconv.ops.export import envelope_decomposed

    want_x, want_raw = torch.autograd.grad(envelope_decomposed(xr, rr, 5, stride, "zeros"), (xr, rr), grad)
    torch.testing.assert_close(grad_x, want_x, **TOL[torch.float64])
    torch.testing.assert_close(grad_raw, want_raw, **SIGMA_TOL[torch.float64])


@given(st.lists(st.one_of(st.integers(-3, 2 ** 41), st.floats(allow_nan=True, allow_infinity=True)), min_size=0,
                max_size=9), st.booleans())
def test_a_drawn_envelope_record_is_read_or_refused_with_a_value_error(entries, as_float):
    from envconv.envelope import read_envelope_record

    dtype = torch.float64 if as_float or any(isinstance(v, float) for v in entries) else torch.int64
    state = torch.tensor(entries, dtype=dtype) if entries else torch.zeros(0, dtype=dtype)
    try:
        record = read_envelope_record(state, "x.envelope._extra_state")
    except ValueError as err:  # never OverflowError, ZeroDivisionError, IndexError ...
        assert "envelope record x.envelope._extra_state" in str(err)
        return
    assert 1 <= max((record.size,) if isinstance(record.size, int) else record.size) <= 1023
    assert record.spatial_dims in (1, 2, 3) and record.channels >= 1
