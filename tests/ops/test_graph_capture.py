"""The ops seen by PyTorch's graph tools: the compiler (no graph breaks), torch.export, FlopCounterMode,
and the ATen-only form the exporters record.

ONNX, ``torch.fx`` and ``torch.jit.trace`` of whole models are in ``tests/test_tracing.py``.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from envconv import GaussianEnvelope, create_model, disentangle, functional

torchvision = pytest.importorskip("torchvision")

# ResNet-50's seven envelopes at 224 x 224: (channels, height = width, stride of the envelope output)
RESNET50_PLACES = [(3, 224, 1), (128, 56, 1), (256, 56, 2), (256, 28, 1), (512, 28, 2), (512, 14, 1), (1024, 14, 2)]


def hand_macs(size):
    """Multiply-adds of the separable envelope at the computed positions, counted by hand: C k OW (H + OH)."""
    total = 0
    for c, h, s in RESNET50_PLACES:
        out = -(-h // s)
        total += c * size * out * (h + out)
    return total


def _envelope(dims, sigma, sizes):
    env = GaussianEnvelope(2, size=sizes, spatial_dims=dims, per_axis=sigma == "axis")
    with torch.no_grad():
        env.raw_sigma.copy_(torch.linspace(-1.0, 2.0, env.raw_sigma.numel()).view(env.raw_sigma.shape))
    return env


@pytest.mark.parametrize("dims, sigma, sizes", [(1, "channel", 5), (2, "channel", (3, 5)), (3, "channel", 3),
                                                (3, "axis", 3), (2, "axis", (1, 5))])
def test_an_envelope_compiles_fullgraph_and_exports_with_a_dynamic_batch_keeping_the_op(dims, sigma, sizes):
    env = _envelope(dims, sigma, sizes)
    x = torch.randn(2, 2, *[4, 5, 6][3 - dims:])
    compiled = torch.compile(env, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), env(x))
    program = torch.export.export(env, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
    assert "envconv.envelope.default" in {str(n.target) for n in program.graph.nodes}
    if not isinstance(sizes, int):  # a size per axis travels in the graph as the op's axis_sizes
        assert str(list(sizes)) in program.graph_module.code
    other = torch.randn(5, *x.shape[1:])
    torch.testing.assert_close(program.module()(other), env(other))


def small_model():
    torch.manual_seed(0)
    return create_model("small_resnet20", num_classes=4, in_chans=1)


def training_step(model):
    def step(x, y):
        return F.cross_entropy(model(x), y)
    return step


@pytest.mark.parametrize("channels_last", [False, True])
def test_training_step_has_no_graph_break(channels_last):
    model = small_model().train()
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    explanation = torch._dynamo.explain(training_step(model))(x, y)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    ops_in_graph = {str(node.target) for g in explanation.graphs for node in g.graph.nodes}
    assert any(target.startswith("envconv.envelope_conv") for target in ops_in_graph), ops_in_graph


def test_functional_op_with_a_gradient_has_no_graph_break():
    x = torch.randn(2, 8, 12, 12, requires_grad=True).contiguous(memory_format=torch.channels_last)
    raw = torch.zeros(8, requires_grad=True)
    explanation = torch._dynamo.explain(lambda a, b: functional.gaussian_envelope(a, b, 9, stride=2).sum())(x, raw)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_compiled_training_step_equals_eager():
    """fullgraph compile (through AOTAutograd, so the ops' registered backward is traced) gives eager's gradients."""
    model = small_model().double().train()
    x, y = torch.randn(4, 1, 28, 28, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    compiled = torch.compile(training_step(model), fullgraph=True, backend="aot_eager")
    grads = []
    for step in (training_step(model), compiled):
        model.zero_grad()
        step(x, y).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_export_keeps_the_op_with_a_dynamic_batch():
    model = small_model().eval()
    x = torch.randn(3, 1, 28, 28)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    targets = {str(node.target) for node in program.graph.nodes}
    assert "envconv.envelope_conv.default" in targets
    for n in (1, 3, 5):
        inp = torch.randn(n, 1, 28, 28)
        torch.testing.assert_close(program.module()(inp), model(inp), rtol=1e-5, atol=1e-5)


def fake_flops(model, shape):
    """FlopCounterMode's count of one forward on fake tensors: the ops' fake kernels and formulas, no arithmetic."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(shape))
    return counter.get_total_flops()


@pytest.mark.parametrize("size", [9, 3])
def test_flop_count_of_resnet50_is_the_separable_count_by_hand(size):
    # the formula is registered on the op, not per kernel: one count stands for every implementation
    plain = torchvision.models.resnet50().eval()
    model = disentangle(torchvision.models.resnet50(), envelope_size=size).eval()
    extra = fake_flops(model, (1, 3, 224, 224)) - fake_flops(plain, (1, 3, 224, 224))
    assert extra == 2 * hand_macs(size)  # FLOPs are 2 per multiply-add
    # the README's figures: at the computed positions, and at full resolution (the paper's count)
    assert round(hand_macs(9) / 1e9, 4) == 0.0248 and round(hand_macs(3) / 1e9, 4) == 0.0083
    full_resolution = [sum(c * k * h * 2 * h for c, h, _ in RESNET50_PLACES) for k in (9, 3)]
    assert [round(m / 1e9, 4) for m in full_resolution] == [0.0406, 0.0135]


def test_flop_formulas_count_each_axis_with_its_own_size():
    x = torch.randn(2, 3, 6, 8, 10)
    with FlopCounterMode(display=False) as counter:
        functional.gaussian_envelope(x, torch.zeros(3), (1, 3, 5), stride=(1, 2, 2), spatial_dims=3)
    # width pass (5 taps) on every input row at 5 strided columns, height pass (3 taps) at 4 of 8 rows,
    # the depth pass (1 tap, computed) at all 6 slices: 2 FLOPs per multiply-add
    n, c = 2, 3
    assert counter.get_total_flops() == 2 * (5 * n * c * 6 * 8 * 5 + 3 * n * c * 6 * 4 * 5 + 1 * n * c * 6 * 4 * 5)
    with FlopCounterMode(display=False) as same:  # equal sizes per axis: the one-size count
        functional.gaussian_envelope(x, torch.zeros(3), (5, 5, 5), spatial_dims=3)
    assert same.get_total_flops() == 2 * 5 * n * c * (6 * 8 * 10) * 3


@pytest.mark.parametrize("raw_shape", [(3, 3), (1, 3), (3,)])
def test_the_aten_only_form_for_exporters_equals_the_op(raw_shape):
    from envconv.ops.export import envelope_decomposed

    x = torch.randn(2, 3, 7, 8, 9, dtype=torch.float64)
    raw = torch.randn(raw_shape, dtype=torch.float64)
    for mode, stride in (("reflect", [1, 2, 1]), ("zeros", [2, 1, 3])):
        want = torch.ops.envconv.envelope(x, raw, 5, stride, mode, "auto")
        torch.testing.assert_close(envelope_decomposed(x, raw, 5, stride, mode), want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("need_x", [True, False])
def test_flop_count_of_a_backward_is_its_passes_by_hand(need_x):
    # forward, 5 taps at stride 2 on 2 x 3 x 8 x 8: the width pass on 8 rows x 4 columns, the height pass on 4 x 4
    forward = 2 * 5 * (2 * 3 * 8 * 4 + 2 * 3 * 4 * 4)
    x, raw = torch.randn(2, 3, 8, 8, requires_grad=need_x), torch.zeros(3, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        functional.gaussian_envelope(x, raw, 5, stride=2).sum().backward()
    # input gradient: the transposed passes (a forward's count); sigma gradient: two forwards' passes with the
    # derivative kernels, then a multiply-add with the output gradient (2 x 3 x 4 x 4 values)
    backward = (forward if need_x else 0) + 2 * forward + 2 * (2 * 3 * 4 * 4)
    assert counter.get_total_flops() == forward + backward
