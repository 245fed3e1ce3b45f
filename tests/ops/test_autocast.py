"""Every op under torch.autocast, as the ATen composition it replaces behaves there (fastconv.ops._autocast).

Without autocast rules a network mixing fastconv's ops with ATen's could not run under AMP: a float16 activation
met a float32 weight and the op raised. The rules are stated here independently of the code (RULES below), and
the registry-driven test fails when an op is added without saying how it behaves under autocast.
"""
import pytest
import torch
import torch.nn.functional as F

import fastconv
import test_batch_norm_act
import test_channel_shuffle
import test_conv2d_act
import test_deform_conv2d
import test_depthwise_conv2d
import test_shuffle_cat
import test_shuffle_cat_conv2d_act
import test_squeeze_excite
from harness import Sample, runnable
from tolerances import tolerance


def _floating(a):
    return isinstance(a, torch.Tensor) and a.is_floating_point()


def _all_to(args, dtype):
    return tuple(a.to(dtype) if _floating(a) else a for a in args)


def lower(args, dtype):
    """F.conv2d under autocast: every floating tensor in the autocast dtype."""
    return _all_to(args, dtype)


def follow_input(args, dtype):
    """Eager SE: pool and scale in the input's dtype, so the result has it; the parameters follow the input."""
    return (args[0],) + _all_to(args[1:], args[0].dtype)


def promote(args, dtype):
    """torch.cat under autocast: the widest dtype of the inputs."""
    widest = torch.promote_types(args[0].dtype, args[1].dtype)
    return _all_to(args, widest)


def unchanged(args, dtype):
    """No rule: F.batch_norm takes a float16/bfloat16 input with float32 parameters and keeps the input's dtype;
    a permutation keeps its dtype."""
    return args


# op -> (its test module, the samples used here, the rule it follows)
RULES = {
    "conv2d_act": (test_conv2d_act, [test_conv2d_act.SAMPLES[i] for i in (1, 3, 8)], lower),
    "depthwise_conv2d": (test_depthwise_conv2d, [test_depthwise_conv2d.SAMPLES[i] for i in (1, 8)], lower),
    "deform_conv2d": (test_deform_conv2d, [test_deform_conv2d.SAMPLES[i] for i in (2, 4)], lower),
    "shuffle_cat_conv2d_act": (test_shuffle_cat_conv2d_act, test_shuffle_cat_conv2d_act.SAMPLES[:2], lower),
    "squeeze_excite": (test_squeeze_excite, test_squeeze_excite.SAMPLES[:2], follow_input),
    "shuffle_cat": (test_shuffle_cat, test_shuffle_cat.SAMPLES[:2], promote),
    "batch_norm_act": (None, test_batch_norm_act.SUBSET_SAMPLES[:1] + test_batch_norm_act.SUBSET_SAMPLES[3:], unchanged),
    "channel_shuffle": (test_channel_shuffle, test_channel_shuffle.SAMPLES[:1], unchanged),
}


def test_every_op_states_its_autocast_rule():
    assert sorted(RULES) == sorted(fastconv.ops.OPS)


def _harness(name):
    module = RULES[name][0]
    return test_batch_norm_act.SUBSET_HARNESS if module is None else module.harness


def _cases():
    for name, (_, samples, rule) in RULES.items():
        for backend, device in (p.values for p in runnable(name)):
            # The interpreter computes bfloat16 wrongly (tests/harness.py); float16 autocast runs Triton here.
            dtypes = [torch.float16] if (backend, device) == ("triton", "cpu") else [torch.bfloat16, torch.float16]
            for dtype in dtypes:
                for sample in samples:
                    for mixed in (False, True):
                        yield pytest.param(name, backend, device, dtype, sample, rule, mixed,
                                           id=f"{name}-{backend}-{device}-{str(dtype)[6:]}-{sample.name}"
                                              f"-{'mixed' if mixed else 'float32'}")


@pytest.mark.parametrize("name, backend, device, dtype, sample, rule, mixed", list(_cases()))
def test_autocast(name, backend, device, dtype, sample, rule, mixed):
    # The reference backend's gradients are ATen's CPU backward kernels with float16/bfloat16 operands, which
    # round partial sums to the reduced type (seen: 3% off on a depthwise weight gradient, 0.3% on a BN weight
    # gradient reduced from a bfloat16 grad_output). ATen's reduced-precision backward is not fastconv's to hold to
    # the table (tests/ops test_backward does not run it either); its dtypes still are checked.
    grad_values = backend != "reference"
    _harness(name).check_autocast(sample, backend, device, dtype, rule, mixed, grad_values)


# --- the dispatcher kernels: direct torch.ops calls, and torch.compile ----------------------------------------
def test_direct_op_call_casts_at_the_dispatcher():
    """A torch.ops.fastconv call skips the Python wrappers: the Autocast kernel registered on the op casts."""
    x, w, b = torch.randn(2, 8, 6, 6), torch.randn(16, 8, 3, 3) / 8, torch.randn(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.ops.fastconv.conv2d_act(x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], 1, "relu")
        dw = torch.ops.fastconv.depthwise_conv2d(x.bfloat16(), torch.randn(8, 1, 3, 3), None, [1, 1], [1, 1, 1, 1],
                                                 [1, 1], None)
    assert out.dtype == dw.dtype == torch.bfloat16
    expected = F.relu(F.conv2d(x.bfloat16().double(), w.bfloat16().double(), b.bfloat16().double(), padding=1))
    torch.testing.assert_close(out.double(), expected, rtol=tolerance(torch.bfloat16)[0], atol=tolerance(torch.bfloat16)[1])
    # Outside autocast the op still refuses mixed dtypes, like F.conv2d.
    with pytest.raises(RuntimeError, match="dtype"):
        torch.ops.fastconv.conv2d_act(x.bfloat16(), w, b, [1, 1], [1, 1, 1, 1], [1, 1], 1, "relu")


def test_compile_fullgraph_under_autocast():
    def block(x, w, b, dw, fc1, fc2):
        y = fastconv.ops.conv2d_act(x, w, b, padding=1, activation="relu6")
        y = fastconv.ops.depthwise_conv2d(y, dw, None, padding=1, activation="hardswish")
        return fastconv.ops.squeeze_excite(y, fc1, None, fc2, None)

    args = (torch.randn(2, 8, 6, 6), torch.randn(16, 8, 3, 3) / 8, torch.randn(16), torch.randn(16, 1, 3, 3) / 3,
            torch.randn(4, 16, 1, 1) / 4, torch.randn(16, 4, 1, 1) / 2)
    with fastconv.backend("cpu"), torch.autocast("cpu", dtype=torch.bfloat16):
        eager = block(*args)
        torch._dynamo.reset()
        compiled = torch.compile(block, fullgraph=True)(*args)
    assert eager.dtype == compiled.dtype == torch.bfloat16
    torch.testing.assert_close(compiled, eager)


def test_cpu_eval_module_follows_autocast():
    """fastconv.nn.Conv2dNormActivation in eval runs prepacked float32 oneDNN weights on channels_last input;
    under autocast it must run in the autocast dtype like torchvision's block, not silently in float32."""
    from torchvision.ops.misc import Conv2dNormActivation as Reference

    torch.manual_seed(0)
    reference = Reference(16, 32, 3).eval()
    ours = fastconv.nn.Conv2dNormActivation(16, 32, 3).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 16, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ours(x)  # packs the float32 weight
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, want = ours(x), reference(x)
        plain = ours(x)
        expected = reference.double()(x.double())
    assert got.dtype == want.dtype == torch.bfloat16 and plain.dtype == torch.float32
    rtol, atol = tolerance(torch.bfloat16)
    torch.testing.assert_close(got.double(), expected, rtol=rtol, atol=atol)
