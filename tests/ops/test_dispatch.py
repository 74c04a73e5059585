"""Which kernel computes an op (``envconv.ops.dispatch``): the measured rules, forced kernels and fallbacks.

The rules follow the committed speed measurements (``docs/speed.md``); a forced kernel that cannot
take an input says why, and ``impl="auto"`` never picks a kernel that is not available.
"""

import pytest
import torch
from op_cases import needs

from envconv.ops import cpu, dispatch


def test_forced_impl_refuses_a_padding_mode_it_cannot_do():
    from envconv import GaussianEnvelope

    env = GaussianEnvelope(8, size=5, padding_mode="reflect")
    env.impl = "cpp"
    with pytest.raises(ValueError, match="impl='cpp'.*pads with zeros.*reflect"):
        env(torch.randn(2, 8, 10, 10))
    env.impl = "triton"
    with pytest.raises(ValueError, match="impl='triton'.*reflect"):
        env(torch.randn(2, 8, 10, 10))


def test_forcing_an_unavailable_kernel_says_why(monkeypatch):
    from envconv import DisentangledConv2d

    monkeypatch.setattr(cpu, "_loaded", False)
    monkeypatch.setattr(cpu, "_failed", "disabled by ENVCONV_NO_EXTENSION")
    conv = DisentangledConv2d(4, 4, 3, padding=1)
    conv.envelope.impl = "cpp"
    with pytest.raises(RuntimeError, match="C\\+\\+ CPU kernel is not available.*ENVCONV_NO_EXTENSION"):
        conv(torch.randn(2, 4, 8, 8, requires_grad=True)).sum().backward()
    conv.envelope.impl = "auto"  # the policy falls back to the composite path
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    conv(x).sum().backward()
    assert x.grad is not None and conv.envelope.raw_sigma.grad is not None


def test_auto_never_picks_an_unavailable_kernel(monkeypatch):
    monkeypatch.setattr(cpu, "_loaded", False)
    monkeypatch.setattr(cpu, "_failed", "no compiler")
    x = torch.randn(2, 16, 32, 32).contiguous(memory_format=torch.channels_last)
    assert dispatch.forward_impl(x, 9, [1, 1], "zeros") == "separable"
    assert dispatch.backward_impl(x, 9, [1, 1], "zeros") == "separable"


def test_dispatch_rules_on_cpu():
    needs("cpp")
    cl = torch.randn(2, 16, 32, 32).contiguous(memory_format=torch.channels_last)
    nchw = torch.randn(2, 16, 32, 32)
    assert dispatch.forward_impl(cl, 3, [1, 1], "zeros") == "full"
    assert dispatch.forward_impl(cl, 9, [1, 1], "zeros") == "cpp"
    assert dispatch.forward_impl(cl, 9, [1, 1], "reflect") == "separable"
    assert dispatch.forward_impl(nchw, 9, [1, 1], "zeros") == "separable"
    assert dispatch.forward_impl(nchw[..., :20, :20], 9, [1, 1], "zeros") == "full"  # small map
    assert dispatch.backward_impl(nchw, 9, [1, 1], "zeros") == "cpp"
    assert dispatch.backward_impl(cl.bfloat16(), 9, [1, 1], "zeros") == "separable"
    stem = torch.randn(2, 3, 32, 32)  # a 2-D stem runs the pass-per-axis loop, as 1-D and 3-D stems do
    assert not dispatch.ring_loop_applies(stem, per_axis=False) and dispatch.ring_loop_applies(nchw, per_axis=False)
    assert not dispatch.ring_loop_applies(nchw, per_axis=True)
    assert dispatch.forward_impl(stem, 9, [1, 1], "zeros") == "cpp"
    with pytest.raises(ValueError, match="impl must be one of"):
        dispatch.forward_impl(cl, 9, [1, 1], "zeros", "fast")


def test_dispatch_rules_on_cpu_in_1d_3d_and_per_axis():
    needs("cpp")

    def picks(shape, stride, layout=torch.contiguous_format, per_axis=False):
        x = torch.randn(shape).contiguous(memory_format=layout)
        return (dispatch.forward_impl(x, 9, stride, "zeros", per_axis=per_axis),
                dispatch.backward_impl(x, 9, stride, "zeros", per_axis=per_axis))

    cl3 = torch.channels_last_3d
    assert picks((1, 3, 4, 8, 8), [1, 1, 1], cl3) == ("cpp", "cpp")  # a stem
    assert picks((1, 3, 4, 8, 8), [1, 2, 2], cl3) == ("separable", "separable")  # strided channels_last stem
    assert picks((1, 3, 4, 8, 8), [1, 2, 2]) == ("cpp", "cpp")  # contiguous stem
    assert picks((1, 16, 4, 8, 8), [2, 2, 2], cl3) == ("separable", "cpp")
    assert picks((1, 32, 2, 14, 14), [1, 1, 1]) == ("separable", "cpp")
    assert picks((1, 32, 2, 14, 14), [2, 2, 2]) == ("separable", "separable")  # strided, contiguous
    assert picks((2, 16, 50), [1]) == ("cpp", "cpp")  # sequences
    assert picks((2, 16, 50), [2]) == ("separable", "separable")
    assert picks((2, 1, 50), [2]) == ("cpp", "cpp")
    assert picks((2, 3, 32, 32), [1, 1], per_axis=True) == ("cpp", "cpp")  # a sigma per axis in 2-D
    assert picks((2, 32, 32, 32), [1, 1], per_axis=True) == ("separable", "cpp")
    assert picks((2, 32, 32, 32), [2, 2], torch.channels_last, per_axis=True) == ("separable", "cpp")
    assert dispatch.backward_impl(torch.randn(1, 3, 4, 8, 8), 9, [1, 1, 1], "reflect") == "separable"
