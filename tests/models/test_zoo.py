"""Registry-driven model tests: every registered fastconv model that has a reference is checked against it
because it is registered. The reference is torchvision's builder of the same name (REFERENCE_NAMES maps
aliases), else timm's. Models defined only here (lenet5, smartnet, ...) are tested in test_own_models.py."""
import copy
from collections.abc import Mapping

import pytest
import torch
import torchvision

import fastconv
from fastconv import models
from tolerances import AUTOCAST_NETWORK_ERROR_RATIO, DEEP_NETWORK_GRAD_FLOAT64, TOLERANCES, scaled_to_output

REFERENCE_NAMES = {"shufflenet_v2": "shufflenet_v2_x1_0"}
# Small inputs keep the file fast on 2 cores; every listed net reduces 64 px to at least 2x2 before pooling.
RESOLUTION = 64
# Where 64 px does not fit: Inception-v3 needs 75 px. DeepLabV3 keeps 1/8 of the input (dilated ResNet), so 32 px
# already gives its ASPP a 4x4 map.
# Inception v4 and Inception-ResNet v2 do not pad their stems: 75 px, their minimum, reaches a 1x1 grid; 48 px
# keeps a 2x2 grid before pooling in Xception and the SENets at about half the cost of 64 px. HEAVY models (eval
# only) run at 32 px unless listed.
RESOLUTIONS = {"inception_v3": 75, "deeplabv3_resnet50": 32, "inception_v4": 75, "inception_resnet_v2": 75,
               "legacy_xception": 48, "legacy_seresnet50": 48, "legacy_seresnext50_32x4d": 48}
# Arguments both builders get: offline (no ImageNet backbone download) and with the auxiliary head.
MODEL_KWARGS = {"deeplabv3_resnet50": dict(weights_backbone=None, aux_loss=True)}
# torchvision's Inception-v3 initialisation (truncated normal, std 0.1, for every conv) grows the eval activations
# ~3x per layer (logits ~1e8 at 75 px): float32 rounding then moves the smaller logits by more than 1e-5
# relative in torchvision itself (measured: ours is as close to the float64 result as torchvision is). The float32
# test gives their convolutions a variance-preserving init instead, as trained weights would be.
RESCALE_CONVS = {"inception_v3"}
# Training-mode checks made elsewhere. Inception-v3: at the sizes this file can afford, training-mode BN
# normalises a handful of values per channel at Mixed_7 (batch 2 x 1x1 maps at 75 px, 3x3 at 139 px) and
# amplifies the float64 rounding of fastconv's BN reduction order to ~1e-11 (the same model under the reference
# backend is bit-identical to torchvision). test_zoo_torchvision_classics.py checks its training step under
# the reference backend (structure, dropout order, buffers, gradients) and its auxiliary head at its real
# 17x17 size with fastconv's kernels.
TRAIN_CHECKED_ELSEWHERE = {"inception_v3"}


def resolution(name):
    return RESOLUTIONS.get(name, 32 if name in HEAVY else RESOLUTION)


def output_tensors(output):
    """The tensors of a model output: a tensor, a dict (segmentation) or a namedtuple (auxiliary logits)."""
    if isinstance(output, torch.Tensor):
        return [output]
    values = output.values() if isinstance(output, Mapping) else output
    return [t for t in values if t is not None]


def reference_builder(name):
    """torchvision's builder for `name`, else timm's, else None (a model fastconv defines itself)."""
    reference_name = REFERENCE_NAMES.get(name, name)
    if reference_name in torchvision.models.list_models():
        return lambda **kwargs: torchvision.models.get_model(reference_name, **kwargs)
    try:
        import timm
    except ImportError:
        return None
    if reference_name in timm.list_models():
        return lambda **kwargs: timm.create_model(reference_name, pretrained=False, **kwargs)
    return None


NAMES = [name for name in models.list_models() if reference_builder(name) is not None]
# The deepest and widest variants share their blocks with a smaller registered model: their keys and eval
# outputs are checked, the (slow on 2 cores) training step and layout variants are left to the small ones.
# Inception v4, Inception-ResNet v2 and Xception have no small sibling (timm's float64 depthwise convolutions
# alone take a minute for Xception's step): test_timm_models.py trains each of their blocks.
HEAVY = {"resnet101", "resnet152", "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2",
         # VGG's 25088x4096 classifier is 0.8 GB in float64 (4 GB with both models' gradients): vgg11_bn trains.
         "vgg11", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
         "densenet161", "densenet169", "densenet201",
         "legacy_seresnet101", "legacy_seresnet152", "legacy_seresnext50_32x4d", "inception_v4", "inception_resnet_v2",
         "legacy_xception"}
LIGHT = [n for n in NAMES if n not in HEAVY]
def pair(name, **kwargs):
    """(fastconv model, torchvision model) with the torchvision weights loaded into ours, strict."""
    torch.manual_seed(0)
    kwargs = {**MODEL_KWARGS.get(name, {}), **kwargs}
    reference = reference_builder(name)(**kwargs)
    ours = models.get_model(name, **kwargs)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours, reference


def randomize_batch_norm(model):
    """Non-trivial running statistics and affine parameters, so eval-mode BN is not the identity.

    The variances keep each BN's gain weight / sqrt(var) mostly below 1: with gains up to 2 (var from 0.5),
    the activations of SE-ResNet-152 grow to ~1e4 and its SE gates (a sigmoid of them) amplify a 1e-16
    relative change of the input to 1e-5 of the logits, so no float64 comparison could be meaningful."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(1.0, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_equal_reference(name):
    ours, reference = pair(name)
    assert list(ours.state_dict().keys()) == list(reference.state_dict().keys())


@pytest.mark.parametrize("name", NAMES)
def test_eval_output_equals_reference(name):
    """In float64: deep nets with random BN statistics amplify float32 rounding (resnet101's output moves by
    ~1e-6 relative under a 1e-7 relative input change), which would hide real differences in noise. The
    float32 eval check is test_num_classes_and_channels_last, on the shallower models."""
    ours, reference = pair(name)
    randomize_batch_norm(reference)
    ours.load_state_dict(reference.state_dict())
    ours.double(), reference.double()
    batch = 1 if name in HEAVY else 2  # float64 convs are slow on the CPU
    x = torch.randn(batch, 3, resolution(name), resolution(name), dtype=torch.float64)
    with torch.no_grad():
        rtol, atol = TOLERANCES[torch.float64]
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", [n for n in LIGHT if n not in TRAIN_CHECKED_ELSEWHERE])
def test_train_step_equals_reference(name):
    """In float64, for the reason given in test_eval_output_equals_reference: fastconv's BN statistics
    (batch_norm_act) sum in another order than ATen's, and deep nets amplify float32 rounding."""
    ours, reference = pair(name)
    ours.double(), reference.double()
    x = torch.randn(2, 3, resolution(name), resolution(name), dtype=torch.float64)
    torch.manual_seed(1)  # the same dropout masks in both
    out = ours.train()(x)
    torch.manual_seed(1)
    expected = reference.train()(x)
    rtol, atol = TOLERANCES[torch.float64]
    torch.testing.assert_close(out, expected, rtol=rtol, atol=atol)
    sum(t.square().mean() for t in output_tensors(out)).backward()
    sum(t.square().mean() for t in output_tensors(expected)).backward()
    grad_rtol, grad_atol = DEEP_NETWORK_GRAD_FLOAT64
    for (key, p), q in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=grad_rtol, atol=grad_atol, msg=lambda m: f"grad of {key}: {m}")
    for (key, a), b in zip(ours.named_buffers(), reference.buffers()):  # BN running statistics
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"buffer {key}: {m}")


@pytest.mark.parametrize("name", LIGHT)
def test_num_classes_and_channels_last(name):
    ours, reference = pair(name, num_classes=10)
    if name in RESCALE_CONVS:
        for module in reference.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight)
        ours.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, resolution(name), resolution(name)).to(memory_format=torch.channels_last)
    with torch.no_grad():
        out = ours.eval()(x)
        rtol, atol = TOLERANCES[torch.float32]
        for got, expected in zip(output_tensors(out), output_tensors(reference.eval()(x))):
            torch.testing.assert_close(*scaled_to_output(got, expected), rtol=rtol, atol=atol)
    assert all(t.shape[:2] == (1, 10) for t in output_tensors(out))


@pytest.mark.parametrize("name, mode", [(n, m) for n in LIGHT for m in ("eval", "train")
                                         if m == "eval" or n not in TRAIN_CHECKED_ELSEWHERE])
def test_autocast_like_reference(name, mode):
    """Under torch.autocast (bfloat16 on the CPU) the model runs, its outputs have torchvision's dtypes, its error
    from float64 stays within tests/tolerances.py's ratio of torchvision's under the same autocast, and a training
    step gives float32 gradients. Without the ops' autocast rules (fastconv.ops._autocast) MobileNetV3 and
    DenseNet raised: a bfloat16 activation met a float32 weight."""
    ours, reference = pair(name)
    randomize_batch_norm(reference)
    ours.load_state_dict(reference.state_dict())
    reference64 = copy.deepcopy(reference).double()
    for model in (ours, reference, reference64):
        getattr(model, mode)()
    x = torch.randn(2, 3, resolution(name), resolution(name))
    torch.manual_seed(1)  # the same dropout masks in all three
    expected = output_tensors(reference64(x.double()))
    # Eval runs in inference mode, as inference does: the CPU takes its no-autograd paths then.
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode(mode == "eval"):
        torch.manual_seed(1)
        got = output_tensors(ours(x))
        torch.manual_seed(1)
        theirs = output_tensors(reference(x))
    _assert_error_like_reference(got, theirs, expected)
    if mode == "train":
        sum(t.float().square().mean() for t in got).backward()
        grads = [p.grad for p in ours.parameters() if p.requires_grad]
        assert grads and all(g is not None and g.dtype == torch.float32 and g.isfinite().all() for g in grads)


def _assert_error_like_reference(got, theirs, expected):
    """Reduced-precision outputs: torchvision's dtypes, and an error from float64 within tests/tolerances.py's
    ratio of torchvision's in the same precision."""
    for g, t, e in zip(got, theirs, expected, strict=True):
        assert g.dtype == t.dtype
        scale = e.abs().max().item()
        error, reference_error = (g.double() - e).abs().max().item(), (t.double() - e).abs().max().item()
        assert error <= AUTOCAST_NETWORK_ERROR_RATIO * reference_error + 2**-9 * scale, (
            f"error from float64 {error:.3g}, torchvision's in the same precision {reference_error:.3g}, "
            f"scale {scale:.3g}")


@pytest.mark.parametrize("name", [n for n in LIGHT if n not in RESCALE_CONVS])  # (Inception-v3 overflows float16)
def test_float16_model_inference_like_reference(name):
    """The model converted to float16 (.half()), in inference mode: the no-autograd CPU paths in a reduced dtype
    (ResNet's fused residual add + ReLU had no such kernel and crashed)."""
    ours, reference = pair(name)
    randomize_batch_norm(reference)
    ours.load_state_dict(reference.state_dict())
    reference64 = copy.deepcopy(reference).double().eval()
    x = torch.randn(2, 3, resolution(name), resolution(name))
    with torch.inference_mode():
        expected = output_tensors(reference64(x.double()))
        got = output_tensors(ours.half().eval()(x.half()))
        theirs = output_tensors(reference.half().eval()(x.half()))
    _assert_error_like_reference(got, theirs, expected)


def test_reference_backend_runs_plain_aten():
    model = models.shufflenet_v2_x0_5().eval()
    x = torch.randn(1, 3, RESOLUTION, RESOLUTION)
    with torch.no_grad(), fastconv.backend("reference"):
        expected = model(x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_weights_from_a_local_file_and_num_classes_check(tmp_path):
    reference = torchvision.models.shufflenet_v2_x0_5(num_classes=7)
    path = tmp_path / "checkpoint.pth"
    torch.save(reference.state_dict(), path)
    ours = models.shufflenet_v2_x0_5(weights=str(path), num_classes=7)
    for a, b in zip(ours.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)
    weights = torchvision.models.ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1
    with pytest.raises(ValueError, match="'num_classes' expected value 1000 but got 7"):
        models.shufflenet_v2_x0_5(weights=weights, num_classes=7)


@pytest.mark.parametrize("name", [n for n in models.list_models() if n in torchvision.models.list_models()])
def test_weights_names_resolve_as_torchvision(name):
    """"DEFAULT", the short and the full enum name resolve to the builder's torchvision weights (shown without
    network: the num_classes check against their categories raises before any download); another model's
    weights and an unknown name raise."""
    weights_class = torchvision.models.get_model_weights(name)
    for weights in ("DEFAULT", weights_class.DEFAULT.name, str(weights_class.DEFAULT)):
        with pytest.raises(ValueError, match="'num_classes' expected value"):
            models.get_model(name, weights=weights, num_classes=7)
    other = torchvision.models.get_model_weights("alexnet" if name != "alexnet" else "vgg11").DEFAULT
    with pytest.raises(TypeError, match="Invalid Weight class"):
        models.get_model(name, weights=other)
    with pytest.raises(ValueError, match="neither a local file nor a weight of"):
        models.get_model(name, weights="IMAGENET9K_V9")


def test_registry():
    assert "shufflenet_v2" in models.list_models()
    assert isinstance(models.get_model("shufflenet_v2"), models.ShuffleNetV2)
    with pytest.raises(ValueError, match="already registered"):
        models.register_model(models.shufflenet_v2_x1_0)
    with pytest.raises(ValueError, match="unknown model"):
        models.get_model("resnet9000")


def test_compile_fullgraph_shufflenet_v2():
    model = models.shufflenet_v2_x0_5().eval()
    x = torch.randn(1, 3, RESOLUTION, RESOLUTION)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True)
        rtol, atol = TOLERANCES[torch.float32]
        torch.testing.assert_close(compiled(x), model(x), rtol=rtol, atol=atol)


def test_compile_fullgraph_mobilenet_v2():
    """Conv2dNormActivation (folded BN, fused activation) and the inverted residual trace without graph breaks.
    Three stages of Table 2 (expansion 1 and 6, stride 2, a residual block) keep the compile short."""
    model = models.mobilenet_v2(width_mult=0.5, inverted_residual_setting=[[1, 16, 1, 1], [6, 24, 2, 2],
                                                                           [6, 32, 1, 2]]).eval()
    randomize_batch_norm(model)
    x = torch.randn(1, 3, RESOLUTION, RESOLUTION)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True)
        rtol, atol = TOLERANCES[torch.float32]
        torch.testing.assert_close(compiled(x), model(x), rtol=rtol, atol=atol)


def test_compile_training_step_shufflenet_v2():
    """A training step of the compiled model (AOTAutograd traces the C++ autograd of batch_norm_act, with its running
    statistics written in place, and of shuffle_cat) equals eager's: output, every parameter gradient and the
    running statistics. Float64, so the comparison is tight."""
    torch.manual_seed(0)
    eager = models.shufflenet_v2_x0_5(num_classes=10).double().train()
    compiled_model = copy.deepcopy(eager)
    x = torch.randn(2, 3, RESOLUTION, RESOLUTION, dtype=torch.float64)
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, fullgraph=True)
    outputs = []
    for model in (eager, compiled):
        out = model(x)
        out.square().mean().backward()
        outputs.append(out)
    rtol, atol = TOLERANCES[torch.float64]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=rtol, atol=atol)
    grad_rtol, grad_atol = DEEP_NETWORK_GRAD_FLOAT64  # inductor sums the surrounding ops in another order
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(p_compiled.grad, p_eager.grad, rtol=grad_rtol, atol=grad_atol,
                                   msg=lambda m: f"{name}.grad: {m}")
    for (name, b_eager), b_compiled in zip(eager.named_buffers(), compiled_model.buffers()):
        torch.testing.assert_close(b_compiled, b_eager, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_densenet_inference_fills_one_buffer_per_block(layout):
    """In inference a dense block allocates its output once and each layer writes its maps into it (no torch.cat);
    the result equals the concatenating path (grad mode on), float64."""
    model = models.densenet121(num_classes=10).double().eval()
    block = model.features.denseblock1
    x = torch.randn(2, 64, 9, 11, dtype=torch.float64).contiguous(memory_format=layout)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler, torch.no_grad():
        buffered = block(x)
    assert "aten::cat" not in {event.name for event in profiler.events()}
    assert buffered.is_contiguous(memory_format=layout)
    concatenated = block(x).detach()  # grad mode: the layers' lists of maps, concatenated
    rtol, atol = TOLERANCES[torch.float64]
    torch.testing.assert_close(buffered, concatenated, rtol=rtol, atol=atol)
