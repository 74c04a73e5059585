"""What the op tests share: inputs in every layout and sigma form, tolerances, and skips for absent kernels."""

import pytest
import torch

import reference
from envconv import functional
from envconv.ops import cpu, dispatch

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=2e-5)}
# the raw-sigma reference is a central difference (error about 1e-9 relative)
SIGMA_TOL = {torch.float64: dict(rtol=1e-6, atol=1e-7), torch.float32: dict(rtol=1e-4, atol=1e-4)}
CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}
#: the forms of raw_sigma: (C,), (1,), (C, n), (1, n)
SIGMAS = ("channel", "shared", "axis", "shared-axis")


def triton_ok() -> bool:
    return dispatch.triton_unsupported(torch.zeros(1, 1, 1, 1), "zeros") is None


def needs(impl, padding_mode="zeros"):
    """Skip a case whose kernel is not here; the kernels pad with zeros only (forcing them otherwise raises)."""
    if impl == "cpp" and not cpu.available():
        pytest.skip(f"the C++ kernel is not available: {cpu.unavailable_reason()}")
    if impl == "triton" and not triton_ok():
        pytest.skip("triton is not importable here")
    if impl in ("cpp", "triton") and padding_mode != "zeros":
        pytest.skip("the kernel pads with zeros")


def in_layout(x, layout):
    """``x`` as contiguous, channels_last or a strided view with gaps (every other channel of a wider tensor)."""
    if layout == "channels_last":
        return x.contiguous(memory_format=CHANNELS_LAST[x.dim()])
    if layout == "strided":
        wide = torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:], dtype=x.dtype)
        wide[:, ::2] = x
        return wide[:, ::2]
    return x


def raw_sigma(channels, dims, sigma, dtype, gen, scale=0.8):
    """A random raw_sigma of the form ``sigma`` (one of :data:`SIGMAS`)."""
    shape = {"channel": (channels,), "shared": (1,), "axis": (channels, dims), "shared-axis": (1, dims)}[sigma]
    return torch.randn(shape, dtype=dtype, generator=gen) * scale


def assert_per_sample_gradients_equal_a_loop(loss, raw, x):
    """``vmap(grad(loss))`` over the samples of ``x`` equals ordinary backward passes, one sample at a time."""
    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(raw, x)
    loop = []
    for xi in x:
        r = raw.clone().requires_grad_()
        loop.append(torch.autograd.grad(loss(r, xi), r)[0])
    torch.testing.assert_close(per_sample, torch.stack(loop), rtol=1e-12, atol=1e-12)


def assert_envelope_matches_reference(x, raw, size, padding_mode, stride, impl, gen, tol=TOL, sigma_tol=SIGMA_TOL):
    """The envelope of ``x`` (which requires grad) and both its gradients equal ``tests/reference.py``; returns it.

    Compared in float64 with the tolerances of ``x``'s dtype; the upstream gradient is drawn from ``gen``.
    """
    dims, dtype = x.dim() - 2, x.dtype
    y = functional.gaussian_envelope(x, raw, size, padding_mode, stride, impl, spatial_dims=dims)
    assert tuple(y.shape) == (*x.shape[:2], *((n - 1) // s + 1 for n, s in zip(x.shape[2:], stride)))
    assert y.dtype == dtype
    gy = torch.randn(y.shape, dtype=dtype, generator=gen)
    gx, graw = torch.autograd.grad(y, (x, raw), gy)
    if x.numel() == 0:  # nothing to filter: empty output, zero gradients
        assert gx.shape == x.shape and torch.equal(graw, torch.zeros_like(raw))
        return y
    want = reference.envelope(x.detach(), raw.detach(), size, padding_mode, stride)
    torch.testing.assert_close(y.double(), torch.from_numpy(want), **tol[dtype])
    want_gx, want_graw = reference.envelope_vjp(x.detach(), raw.detach(), size, gy, padding_mode, stride)
    torch.testing.assert_close(gx.double(), torch.from_numpy(want_gx), **tol[dtype])
    torch.testing.assert_close(graw.double(), torch.from_numpy(want_graw), **sigma_tol[dtype])
    return y
