"""Models fastconv defines itself (no torchvision/timm reference): lenet5, zfnet, highway_net, pyramidnet*,
shufflenet_v1*, smartnet, msdnet. Checked against independent facts instead: parameter counts, output sizes and
FLOPs as published, plain-torch compositions written here, fastconv's "reference" backend (plain ATen),
forward/backward, channels_last, num_classes."""
import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv import models
from fastconv.models._complexity import multiply_adds
from fastconv.models._anytime import budgeted_thresholds, exit_confidence, geometric_exit_fractions
from fastconv.models.highway import HighwayConv2d
from fastconv.models.msdnet import MSDLayer, scale_schedule
from fastconv.models.pyramidnet import BasicUnit, BottleneckUnit
from fastconv.models.shufflenetv1 import ShuffleNetV1Unit
from test_zoo import randomize_batch_norm, reference_builder
from tolerances import TOLERANCES

# (input channels, resolution, batch) per model: the smallest inputs each net reduces to >= 1x1 (fast on 2 cores).
INPUTS = {
    "lenet5": (1, 32, 2), "zfnet": (3, 64, 2), "highway_net": (3, 32, 2), "smartnet": (3, 32, 2),
    "msdnet": (3, 16, 2),
    "pyramidnet": (3, 16, 2), "pyramidnet110_a48": (3, 16, 2), "pyramidnet272_a200": (3, 8, 2),
    "pyramidnet200_a300": (3, 16, 2),
    "shufflenet_v1": (3, 32, 2), "shufflenet_v1_x0_5": (3, 32, 2), "shufflenet_v1_x1_0": (3, 32, 2),
    "shufflenet_v1_x1_5": (3, 32, 2), "shufflenet_v1_x2_0": (3, 32, 2),
    "dcn_resnet50": (3, 32, 2),  # its equality with resnet50 is tests/models/test_dcn_resnet.py
}
OWN = [name for name in models.list_models() if reference_builder(name) is None]
# For the float64 backend / layout comparisons: one net per family, shallow where the family allows (a
# 20-layer PyramidNet runs the same units as the 110-layer one).
SMALL = {"lenet5": {}, "zfnet": {}, "highway_net": {}, "smartnet": {}, "msdnet": {}, "pyramidnet": dict(depth=20),
         "shufflenet_v1_x0_5": dict(groups=8)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these nets run hundreds of tiny convolutions (every PyramidNet unit has its own
    width), and on a shared, oversubscribed 2-core machine two OpenMP threads per op ran them ~20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def parameter_count(model):
    return sum(p.numel() for p in model.parameters())


def sample(name, dtype=torch.float32, batch=None):
    channels, size, default_batch = INPUTS[name]
    return torch.randn(batch or default_batch, channels, size, size, dtype=dtype)


def logits_of(output):
    return output[-1] if isinstance(output, list) else output  # smartnet: the last exit


def test_every_own_model_has_test_inputs():
    assert set(OWN) == set(INPUTS), "a registered model without a reference needs an entry in INPUTS"


@pytest.mark.parametrize("name", OWN)
def test_forward_backward(name):
    model = models.get_model(name, num_classes=7).train()
    x = sample(name).requires_grad_()
    out = model(x)
    outputs = out if isinstance(out, list) else [out]
    assert all(o.shape == (x.shape[0], 7) for o in outputs)
    sum(o.square().mean() for o in outputs).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for key, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), key


@pytest.mark.parametrize("name", SMALL)
def test_eval_equals_reference_backend_and_channels_last(name):
    """fastconv's kernels (and folded BN) vs the plain-ATen backend, then channels_last vs NCHW. In float64:
    random BN statistics make deep nets' logits large, and float32 rounding would hide real differences."""
    model = models.get_model(name, **SMALL[name]).double().eval()
    randomize_batch_norm(model)
    x = sample(name, torch.float64)
    rtol, atol = TOLERANCES[torch.float64]
    with torch.no_grad():
        out = logits_of(model(x))
        with fastconv.backend("reference"):
            torch.testing.assert_close(out, logits_of(model(x)), rtol=rtol, atol=atol)
        channels_last = logits_of(model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last)))
        torch.testing.assert_close(channels_last, out, rtol=rtol, atol=atol)


# --- LeNet-5 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("classic", [False, True])
def test_lenet5_parameters_and_plain_torch_equality(classic):
    """61,706 parameters (10 classes) in both forms; forward and gradients equal a plain-torch LeNet-5."""
    model = models.lenet5(classic=classic).double()
    assert parameter_count(model) == 61_706
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    params = dict(model.named_parameters())

    def act(t):
        return 1.7159 * torch.tanh(t * 2 / 3) if classic else F.relu(t)

    pool = F.avg_pool2d if classic else F.max_pool2d
    h = pool(act(F.conv2d(x, params["c1.weight"], params["c1.bias"])), 2)
    h = pool(act(F.conv2d(h, params["c3.weight"], params["c3.bias"])), 2)
    h = act(F.conv2d(h, params["c5.weight"], params["c5.bias"])).flatten(1)
    h = act(F.linear(h, params["f6.weight"], params["f6.bias"]))
    expected = F.linear(h, params["output.weight"], params["output.bias"])
    out = model(x)
    rtol, atol = TOLERANCES[torch.float64]
    torch.testing.assert_close(out, expected, rtol=rtol, atol=atol)
    grads = torch.autograd.grad(out.sin().sum(), list(params.values()))
    expected_grads = torch.autograd.grad(expected.sin().sum(), list(params.values()))
    for key, grad, expected_grad in zip(params, grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=rtol, atol=atol, msg=lambda m: f"{key}: {m}")


def test_lenet5_training_runs_fastconv_custom_ops():
    """C1 (one input channel = depthwise, multiplier 6) runs fastconv's op forward and backward."""
    model = models.lenet5().train()
    x = torch.randn(4, 1, 32, 32)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    names = {event.name for event in profiler.events()}
    assert "fastconv::depthwise_conv2d" in names
    assert "fastconv::_depthwise_conv2d_backward" in names


# --- ZFNet --------------------------------------------------------------------------------------------------
def test_zfnet_feature_sizes_as_fig3():
    """Fig. 3: 224 -> 110 (conv1) -> 55 (pool) -> 26 (conv2) -> 13 (pool, conv3-5) -> 6 (pool)."""
    model = models.zfnet().eval()
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:])))
             for m in model.features if not isinstance(m, torch.nn.LocalResponseNorm)]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    for hook in hooks:
        hook.remove()
    assert sizes == [(96, 110, 110), (96, 55, 55), (256, 26, 26), (256, 13, 13), (384, 13, 13), (384, 13, 13),
                     (256, 13, 13), (256, 6, 6)]
    conv1 = model.features[0][0]
    assert conv1.kernel_size == (7, 7) and conv1.stride == (2, 2)


# --- Highway networks ---------------------------------------------------------------------------------------
def test_highway_layer_equals_gated_formula():
    layer = HighwayConv2d(8).double()
    assert torch.all(layer.gate.bias == -1.0)  # negative transform-gate bias: start by carrying
    with torch.no_grad():
        layer.gate.bias.uniform_(-1, 1)
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    transform = F.relu(F.conv2d(x, layer.transform[0].weight, layer.transform[0].bias, padding=1))
    gate = torch.sigmoid(F.conv2d(x, layer.gate.weight, layer.gate.bias, padding=1))
    rtol, atol = TOLERANCES[torch.float64]
    torch.testing.assert_close(layer(x), transform * gate + x * (1 - gate), rtol=rtol, atol=atol)


def test_highway_net_is_highway_b():
    """Table 1, Highway B: 19 layers (17 convolutional), ~2.3M parameters."""
    model = models.highway_net()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m not in
             {layer.gate for layer in model.modules() if isinstance(layer, HighwayConv2d)}]
    assert len(convs) == 17
    assert round(parameter_count(model) / 1e6, 1) == 2.3


# --- PyramidNet ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, millions", [
    ("pyramidnet110_a48", 1.7), ("pyramidnet272_a200", 26.0),  # Table 4 (CIFAR-10)
    ("pyramidnet200_a300", 62.1),  # Table 5 (ImageNet)
])
def test_pyramidnet_parameters_as_published(name, millions):
    """The paper counts convolution and FC weights (not BN's), to one decimal (1.76M prints as 1.7M)."""
    model = models.get_model(name)
    weights = sum(p.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
                  for p in m.parameters())
    assert abs(weights / 1e6 - millions) < 0.1


def test_pyramidnet_widens_additively():
    """Widths grow by alpha / N per unit: 16 + 48 = 64 channels at the end of PyramidNet-110 (alpha 48)."""
    model = models.pyramidnet110_a48()
    widths = [unit.conv2.out_channels for stage in (model.layer1, model.layer2, model.layer3) for unit in stage]
    assert len(widths) == 54 and widths[-1] == 64
    steps = [b - a for a, b in zip(widths, widths[1:])]
    assert set(steps) <= {0, 1, 2}  # 48/54 channels per unit, rounded


@pytest.mark.parametrize("bottleneck", [False, True])
def test_pyramidnet_unit_equals_plain_torch(bottleneck):
    """A downsampling unit in training mode (batch statistics) vs F.batch_norm / F.conv2d / zero padding."""
    unit_class = BottleneckUnit if bottleneck else BasicUnit
    unit = unit_class(8, 6 if bottleneck else 11, stride=2).double().train()  # widening: 8 -> 24 or 11
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    out = unit(x)

    def bn(t, module):
        return F.batch_norm(t, None, None, module.weight, module.bias, training=True)

    h = bn(x, unit.bn1)
    if bottleneck:
        h = F.relu(bn(F.conv2d(h, unit.conv1.weight), unit.bn2))
        h = F.relu(bn(F.conv2d(h, unit.conv2.weight, stride=2, padding=1), unit.bn3))
        h = bn(F.conv2d(h, unit.conv3.weight), unit.bn4)
    else:
        h = F.relu(bn(F.conv2d(h, unit.conv1.weight, stride=2, padding=1), unit.bn2))
        h = bn(F.conv2d(h, unit.conv2.weight, padding=1), unit.bn3)
    shortcut = F.avg_pool2d(x, 2, 2, ceil_mode=True)
    expected = h + torch.cat([shortcut, shortcut.new_zeros(2, h.shape[1] - 8, 3, 3)], 1)
    rtol, atol = TOLERANCES[torch.float64]
    torch.testing.assert_close(out, expected, rtol=rtol, atol=atol)
    grad, = torch.autograd.grad(out.sin().sum(), x)
    expected_grad, = torch.autograd.grad(expected.sin().sum(), x)
    torch.testing.assert_close(grad, expected_grad, rtol=rtol, atol=atol)


# --- ShuffleNet v1 ------------------------------------------------------------------------------------------
TABLE1_CHANNELS = {1: [144, 288, 576], 2: [200, 400, 800], 3: [240, 480, 960], 4: [272, 544, 1088],
                   8: [384, 768, 1536]}
# Table 1's complexity row (MFLOPs = million multiply-adds at 224x224) for ShuffleNet 1x, per groups.
TABLE1_MFLOPS = {1: 143, 2: 140, 3: 137, 4: 133, 8: 137}


@pytest.mark.parametrize("groups", sorted(TABLE1_CHANNELS))
def test_shufflenet_v1_channels_and_flops_as_table1(groups):
    model = models.shufflenet_v1(groups=groups).eval()
    outputs = [stage[-1].expand[0].out_channels for stage in (model.stage2, model.stage3, model.stage4)]
    assert outputs == TABLE1_CHANNELS[groups]
    mflops = multiply_adds(model, torch.randn(1, 3, 224, 224)) / 1e6
    assert abs(mflops - TABLE1_MFLOPS[groups]) / TABLE1_MFLOPS[groups] < 0.03, mflops


def plain_shufflenet_unit(x, unit, groups, stride):
    """A ShuffleNet unit written with torch.nn.functional only (eval-mode BN)."""
    def conv_bn(t, block, **kwargs):
        conv, bn = block[0], block[1]
        t = F.conv2d(t, conv.weight, None, conv.stride, conv.padding, groups=conv.groups)
        return F.batch_norm(t, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False)

    h = F.relu(conv_bn(x, unit.compress))
    n, c, height, width = h.shape  # channel shuffle: (g, c/g) -> transpose -> flatten
    h = h.reshape(n, groups, c // groups, height, width).transpose(1, 2).reshape(n, c, height, width)
    h = conv_bn(conv_bn(h, unit.depthwise), unit.expand)
    if stride == 1:
        return F.relu(x + h)
    return F.relu(torch.cat([F.avg_pool2d(x, 3, 2, 1), h], 1))


@pytest.mark.parametrize("stride", [1, 2])
def test_shufflenet_v1_unit_equals_plain_torch(stride):
    groups = 3
    in_channels = 24 if stride == 1 else 12
    unit = ShuffleNetV1Unit(in_channels, 24, groups, stride).double().eval()
    randomize_batch_norm(unit)
    x = F.relu(torch.randn(2, in_channels, 8, 8, dtype=torch.float64))  # units see ReLU outputs
    rtol, atol = TOLERANCES[torch.float64]
    with torch.no_grad():
        torch.testing.assert_close(unit(x), plain_shufflenet_unit(x, unit, groups, stride), rtol=rtol, atol=atol)


# --- SmartNet -----------------------------------------------------------------------------------------------
@pytest.fixture
def smartnet():
    torch.manual_seed(0)
    model = models.smartnet(in_channels=1).eval()
    randomize_batch_norm(model)
    return model


def test_smartnet_exits_see_every_earlier_block(smartnet):
    """Block k's input is the stem plus every earlier block's output: its channels add up."""
    config = smartnet.config
    for index, block in enumerate(smartnet.blocks):
        assert block.select[0].in_channels == config["stem_channels"] + sum(config["growths"][:index])
    outputs = smartnet(torch.randn(2, 1, 32, 32))
    assert len(outputs) == 4 and all(o.shape == (2, 10) for o in outputs)


def test_smartnet_truncate_saves_and_loads_only_its_exits(smartnet, tmp_path):
    truncated = smartnet.truncate(2)
    keys = list(truncated.state_dict())
    assert keys and all(not k.startswith(("blocks.2", "blocks.3", "exits.2", "exits.3")) for k in keys)
    assert set(keys) < set(smartnet.state_dict())
    path = tmp_path / "smartnet_2_exits.pth"
    torch.save(truncated.state_dict(), path)
    loaded = models.smartnet(in_channels=1, num_exits=2, weights=str(path)).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        full = smartnet(x)
        for reloaded in (truncated.eval()(x), loaded(x)):
            assert len(reloaded) == 2
            for a, b in zip(reloaded, full[:2]):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert parameter_count(loaded) < parameter_count(smartnet)
    x = torch.randn(1, 1, 32, 32)
    assert smartnet.exit_costs((1, 32, 32))[1] == multiply_adds(truncated.eval(), x)


def test_smartnet_exit_loss_and_exit_parameters(smartnet):
    logits = [torch.randn(4, 10) for _ in range(4)]
    target = torch.tensor([1, 2, 3, 4])
    expected = sum(0.25 * F.cross_entropy(l, target) for l in logits)
    torch.testing.assert_close(models.exit_loss(logits, target), expected)
    trained = {id(p) for p in smartnet.exit_parameters(2)}
    assert trained == {id(p) for m in (smartnet.blocks[2], smartnet.exits[2]) for p in m.parameters()}


# --- Anytime networks (SmartNet, MSDNet): what fastconv.models._anytime gives both -----------------------------
@pytest.fixture(params=["smartnet", "msdnet"])
def anytime_model(request):
    torch.manual_seed(0)
    model = models.get_model(request.param, in_channels=1).eval()
    randomize_batch_norm(model)
    return model


def test_anytime_predict_skips_later_blocks_for_exited_samples(anytime_model):
    model, last = anytime_model, anytime_model.num_exits - 1
    x = torch.randn(16, 1, 32, 32)
    with torch.no_grad():
        full = model(x)
    batch_sizes = []
    hooks = [block.register_forward_hook(lambda m, i, o: batch_sizes.append(len(o[0] if isinstance(o, list) else o)))
             for block in model.blocks]
    # Threshold at the median first-exit confidence: about half the samples stop at exit 1.
    threshold = full[0].softmax(1).amax(1).median().item()
    logits, exit_used = model.predict(x, threshold)
    for hook in hooks:
        hook.remove()
    going = [int((exit_used >= k).sum()) for k in range(model.num_exits)]
    assert batch_sizes == [n for n in going if n > 0]  # block k ran on exactly the samples still going
    assert 0 < going[1] < 16
    rtol, atol = TOLERANCES[torch.float32]
    for i in range(16):
        torch.testing.assert_close(logits[i], full[exit_used[i]][i], rtol=rtol, atol=atol)
        confidence = full[exit_used[i]][i].softmax(0).max()
        assert exit_used[i] == last or confidence >= threshold
        assert all(full[k][i].softmax(0).max() < threshold for k in range(exit_used[i]))
    logits, exit_used = model.predict(x, 0.0)
    assert torch.all(exit_used == 0)
    torch.testing.assert_close(logits, full[0], rtol=rtol, atol=atol)
    logits, exit_used = model.predict(x, 1.1)
    assert torch.all(exit_used == last)
    torch.testing.assert_close(logits, full[last], rtol=rtol, atol=atol)
    # One threshold per exit: nobody may leave at exit 1, everybody at exit 2.
    logits, exit_used = model.predict(x, [1.1, 0.0] + [0.5] * (model.num_exits - 2))
    assert torch.all(exit_used == 1)
    torch.testing.assert_close(logits, full[1], rtol=rtol, atol=atol)


def test_anytime_exit_costs_equal_separate_forwards(anytime_model):
    """The cumulative counts of one pass equal the counts of forwards that stop at each exit."""
    costs = anytime_model.exit_costs((1, 32, 32))
    assert all(a < b for a, b in zip(costs, costs[1:]))
    x = torch.randn(1, 1, 32, 32)
    assert costs == [multiply_adds(anytime_model, x, num_exits=k + 1) for k in range(anytime_model.num_exits)]
    assert costs[-1] == multiply_adds(anytime_model, x)


def test_budgeted_thresholds_send_the_requested_share_out_at_each_exit():
    """8 samples, shares 1/2, 1/4, 1/4: the 4 most confident at exit 1 leave there, then the 2 most confident
    at exit 2 of the other 4, the last 2 go to the end (MSDNet's budgeted batch classification)."""
    fractions = geometric_exit_fractions(0.5, 3)
    torch.testing.assert_close(torch.tensor(fractions), torch.tensor([4.0, 2.0, 1.0]) / 7)
    first = torch.tensor([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4])
    second = torch.tensor([0.0, 0.5, 0.0, 0.9, 0.0, 0.1, 0.0, 0.8])  # samples 3 and 7 are the confident ones
    # Logits whose softmax top probability is the given confidence: two classes, log-odds of p.
    exit_logits = [torch.stack([torch.zeros(8), torch.logit(0.5 + c.clamp(1e-3, 0.999) / 2)], 1) for c in
                   (first, second, torch.rand(8))]
    thresholds = budgeted_thresholds(exit_logits, [0.5, 0.25, 0.25])
    leave_first = exit_confidence(exit_logits[0]) >= thresholds[0]
    assert leave_first.nonzero().flatten().tolist() == [0, 2, 4, 6]
    leave_second = ~leave_first & (exit_confidence(exit_logits[1]) >= thresholds[1])
    assert leave_second.nonzero().flatten().tolist() == [3, 7]
    assert thresholds[-1] == float("-inf")


@pytest.mark.parametrize("training", [False, True])
def test_anytime_compiles_fullgraph(anytime_model, training):
    """One graph for the whole multi-exit forward (SmartNet's feature matrix, MSDNet's list of scales: plain
    Python state dynamo traces), in eval and in training (fastconv's batch_norm_act custom op, its fake
    kernel and autograd, inside the graph). The aot_eager backend: dynamo capture and AOT autograd are what
    fastconv must support; inductor's C++ code generation took minutes on the shared 2-core machine
    (test_zoo compiles shufflenet with it)."""
    import copy

    x = torch.randn(2, 1, 32, 32)
    eager = copy.deepcopy(anytime_model).train(training)
    model = anytime_model.train(training)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.set_grad_enabled(training):
        outputs, expected = compiled(x), eager(x)
    rtol, atol = TOLERANCES[torch.float32]
    for a, b in zip(outputs, expected):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    if training:
        sum(o.square().mean() for o in outputs).backward()
        sum(o.square().mean() for o in expected).backward()
        for (key, p), q in zip(model.named_parameters(), eager.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=rtol, atol=atol, msg=lambda m: f"grad of {key}: {m}")


# --- MSDNet -------------------------------------------------------------------------------------------------
def test_msdnet_drops_scales_as_the_authors_code():
    """prune='max': 8 layers over 3 scales are cut in spans of ceil(8/3) = 3, each keeping one scale fewer."""
    assert scale_schedule(8, 3) == [3, 3, 3, 2, 2, 2, 1, 1]
    assert scale_schedule(7, 3) == [3, 3, 3, 2, 2, 2, 1]
    assert scale_schedule(5, 3, drop_scales=False) == [3] * 5


def test_msdnet_maps_per_block_as_counted_by_hand():
    """Default: channels 6, growth 4, widths 1-2-4, blocks of 2 layers. Channel units after each layer:
    6 -> 10 -> 14 | 18 -> 22, drop scale 32, transition to 11 | 15 -> 19 | 23, drop 16, to 11 -> 15: the
    coarsest (8x8, 4 units wide) maps each classifier sees have 56, 44, 76 and 60 channels."""
    model = models.msdnet(in_channels=1).eval()
    sizes = []
    hooks = [block.register_forward_hook(lambda m, i, o: sizes.append([tuple(t.shape[1:]) for t in o]))
             for block in model.blocks]
    with torch.no_grad():
        outputs = model(torch.randn(2, 1, 32, 32))
    for hook in hooks:
        hook.remove()
    assert sizes == [[(14, 32, 32), (28, 16, 16), (56, 8, 8)], [(22, 16, 16), (44, 8, 8)],
                     [(38, 16, 16), (76, 8, 8)], [(60, 8, 8)]]
    assert [e.convs[0][0].in_channels for e in model.exits] == [56, 44, 76, 60]
    assert len(outputs) == 4 and all(o.shape == (2, 10) for o in outputs)


def test_msdnet_first_exit_multiply_adds_counted_by_hand():
    """A 2-scale, 1-layer MSDNet without bottlenecks on 1x8x8: first layer 1->2 (3x3, 8x8) and 2->4 (3x3,
    stride 2, 4x4); the layer: 2->2 at 8x8, 2->2 strided and 4->2 at 4x4; the classifier: 8->4 (2x2),
    4->4 (1x1), linear 4->10."""
    model = models.msdnet(in_channels=1, steps=(1,), num_scales=2, channels=2, growth=2, scale_widths=(1, 2),
                          bottleneck=False, bottleneck_widths=(1, 2), classifier_channels=4)
    expected = (2 * 1 * 9 * 64 + 4 * 2 * 9 * 16
                + 2 * 2 * 9 * 64 + 2 * 2 * 9 * 16 + 2 * 4 * 9 * 16
                + 4 * 8 * 9 * 4 + 4 * 4 * 9 * 1 + 4 * 10)
    assert model.exit_costs((1, 8, 8)) == [expected]


def plain_conv_bn_relu(x, block, stride=1):
    conv, bn = block[0], block[1]
    h = F.conv2d(x, conv.weight, None, stride, conv.kernel_size[0] // 2)
    return F.relu(F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False))


def plain_msd_conv(x, unit, stride):
    """The paper's bottleneck conv: 1x1 conv-BN-ReLU, then 3x3 conv-BN-ReLU with ``stride``."""
    bottleneck, conv3x3 = unit
    assert bottleneck[0].kernel_size == (1, 1) and conv3x3[0].kernel_size == (3, 3)
    return plain_conv_bn_relu(plain_conv_bn_relu(x, bottleneck), conv3x3, stride)


@pytest.mark.parametrize("drops_scale", [False, True])
def test_msdnet_layer_equals_plain_torch(drops_scale):
    """Each scale's output is [same, strided 3x3 of the finer scale, regular 3x3 of the same scale]
    (concatenated; the finest output has no strided part unless the layer drops the scale above it)."""
    layer = MSDLayer([4, 8, 16], [2, 4, 8], [1, 2, 4], 3, 2 if drops_scale else 3).double().eval()
    randomize_batch_norm(layer)
    x0, x1, x2 = (torch.randn(2, c, s, s, dtype=torch.float64) for c, s in ((4, 8), (8, 4), (16, 2)))
    units = list(layer.units)
    expected = [] if drops_scale else [torch.cat([x0, plain_msd_conv(x0, units[0].regular, 1)], 1)]
    scale1, scale2 = units[-2], units[-1]
    expected += [torch.cat([x1, plain_msd_conv(x0, scale1.strided, 2), plain_msd_conv(x1, scale1.regular, 1)], 1),
                 torch.cat([x2, plain_msd_conv(x1, scale2.strided, 2), plain_msd_conv(x2, scale2.regular, 1)], 1)]
    # Bottleneck widths: min(input channels, width * output channels) (the authors' ConvBN).
    assert [scale1.strided[0][0].out_channels, scale1.regular[0][0].out_channels,
            scale2.strided[0][0].out_channels, scale2.regular[0][0].out_channels] == [2, 4, 8, 16]
    with torch.no_grad():
        outputs = layer([x0, x1, x2])
    assert [o.shape[1] for o in outputs] == ([] if drops_scale else [6]) + [12, 24]
    rtol, atol = TOLERANCES[torch.float64]
    for out, reference in zip(outputs, expected, strict=True):
        torch.testing.assert_close(out, reference, rtol=rtol, atol=atol)
