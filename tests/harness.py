"""One reusable checker for every fastconv op: a new op's tests only describe its sample inputs.

For a sample and a (backend, device) pair, `OpHarness` checks
  - forward against an independent float64 reference (values, dtype, shape, output layout),
  - backward against the reference's gradients,
  - torch.autograd.gradcheck (and gradgradcheck) in float64,
  - torch.library.opcheck on the custom op the backend runs (schema, fake, autograd registration),
  - torch.compile(fullgraph=True) of the public function, equal to eager.
"""
import dataclasses
from typing import Callable, Optional

import pytest
import torch

import fastconv
from fastconv import _backend
from tolerances import scaled_to_output, tolerance

GPU = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if GPU else [])
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "channels_last", "strided"]
# The C++ ops' autograd (csrc/autograd.cpp) is one code for both devices; float64 runs on the CPU kernels.
CPP_BACKENDS = [pytest.param("cpu", "cpu", id="cpu-cpu")]


def runnable(op_name):
    """(backend, device) pairs that can run `op_name` here, as pytest params with readable ids."""
    entry = fastconv.ops.OPS[op_name]
    return [
        pytest.param(backend, device, id=f"{backend}-{device}")
        for backend in entry.backends
        for device in DEVICES
        if _backend.why_not(backend, device) is None
    ]


def to_layout(tensor, layout):
    """The same values in another memory layout: NCHW, channels_last (4-D only) or a non-contiguous view."""
    if layout == "contiguous":
        return tensor.contiguous()
    if layout == "channels_last":
        if tensor.dim() != 4:
            pytest.skip("channels_last applies to 4-D tensors")
        return tensor.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        # Every other element of a twice-as-wide buffer along the last dimension: not dense.
        wide = torch.empty(*tensor.shape[:-1], 2 * tensor.shape[-1], dtype=tensor.dtype, device=tensor.device)
        view = wide[..., ::2]
        view.copy_(tensor)
        return view
    raise ValueError(layout)


@dataclasses.dataclass
class Sample:
    """Positional arguments of an op. Floating tensors are cast to the dtype under test; `grad` lists the
    positions of the differentiable tensors; `layout` applies to tensors of the positions in `layout_args`."""

    args: tuple
    name: str = ""
    grad: tuple = (0,)
    layout_args: tuple = (0,)

    def materialize(self, device, dtype, layout="contiguous", requires_grad=False):
        out = []
        for position, arg in enumerate(self.args):
            if isinstance(arg, torch.Tensor):
                arg = arg.to(device=device, dtype=dtype if arg.is_floating_point() else arg.dtype)
                if position in self.layout_args:
                    arg = to_layout(arg, layout)
                if requires_grad and position in self.grad:
                    arg = arg.detach().requires_grad_(True)
            out.append(arg)
        return tuple(out)


def saved_for_backward(fn):
    """(fn(), the storages autograd saved for the backward while fn ran): every saved tensor passes through
    saved_tensors_hooks, the C++ autograd's (csrc/autograd.cpp) included."""
    pointers = []

    def pack(tensor):
        pointers.append(tensor.data_ptr())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return out, pointers


def check_saves_only_what_the_gradients_need(op, weight_shape, weight_grad, activation, input_saved, output_saved):
    """op(x, w, None, 1, 1, activation=...) on the cpu backend (its C++ autograd) keeps the input only for
    grad_weight and hardswish/silu's recomputed pre-activation, and the output only for relu/relu6's derivative;
    the weight always (grad_input needs it). One case of SAVES_CASES."""
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    w = torch.randn(weight_shape).requires_grad_(weight_grad)
    with fastconv.backend("cpu"):
        out, saved = saved_for_backward(lambda: op(x, w, None, 1, 1, activation=activation))
    assert (x.data_ptr() in saved, out.data_ptr() in saved) == (input_saved, output_saved)
    assert w.data_ptr() in saved
    torch.autograd.grad(out.sum(), x)  # and the backward still runs


SAVES_CASES = [  # (weight requires grad, activation, whether the input is saved, whether the output is saved)
    pytest.param(False, None, False, False, id="input-grad-only"),
    pytest.param(True, None, True, False, id="weight-grad-needs-the-input"),
    pytest.param(False, "relu", False, True, id="relu-recomputes-from-the-output"),
    pytest.param(False, "silu", True, False, id="silu-recomputes-from-the-input"),
]


def _narrower(*dtypes):
    return max(dtypes, key=lambda d: torch.finfo(d).eps)


def _float64(args):
    return tuple(
        a.detach().double().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) and a.is_floating_point()
        else a
        for a in args
    )


class OpHarness:
    def __init__(
        self,
        name: str,
        public: Callable,
        reference64: Callable,
        exact: bool = False,
        interpreter_bf16: bool = False,
        expected_strides: Optional[Callable] = None,
    ):
        """
        name: the op's name in fastconv.ops.OPS.
        public: the public function (follows the backend switch).
        reference64: an independent implementation, run in float64 on the same device.
        exact: results must be bit-identical (data movement).
        interpreter_bf16: the Triton path is correct for bfloat16 under the interpreter (it moves bits
            only); otherwise bf16 Triton cases are skipped on CPU, as the interpreter computes bf16 wrongly.
        expected_strides: expected_strides(*args, output) -> the strides the output must have, for ops whose
            output is not shaped like their input; default: those of torch.empty_like(first layout argument),
            checked for 4-D inputs.
        """
        self.name = name
        self.public = public
        self.reference64 = reference64
        self.exact = exact
        self.interpreter_bf16 = interpreter_bf16
        self.expected_strides = expected_strides

    def _skip_unsupported(self, backend, device, dtype):
        if backend == "triton" and device == "cpu" and dtype == torch.bfloat16 and not self.interpreter_bf16:
            pytest.skip("the Triton interpreter computes bfloat16 wrongly; this path is tested on a GPU")

    def run(self, backend, args):
        with fastconv.backend(backend):
            return self.public(*args)

    def check_forward(self, sample: Sample, backend, device, dtype, layout="contiguous"):
        self._skip_unsupported(backend, device, dtype)
        args = sample.materialize(device, dtype, layout)
        out = self.run(backend, args)
        expected = self.reference64(*_float64(args))
        assert out.dtype == dtype and out.device.type == device
        assert out.shape == expected.shape
        first = args[sample.layout_args[0]]
        if backend != "reference" and self.expected_strides is not None:
            assert out.stride() == self.expected_strides(*args, out), "output has the wrong memory format"
        elif backend != "reference" and first.dim() == 4:
            assert out.stride() == torch.empty_like(first).stride(), "output must keep the input's memory format"
        rtol, atol = tolerance(dtype, self.exact)
        torch.testing.assert_close(out.double(), expected.double(), rtol=rtol, atol=atol)
        return out

    def check_backward(self, sample: Sample, backend, device, dtype, layout="contiguous"):
        self._skip_unsupported(backend, device, dtype)
        args = sample.materialize(device, dtype, layout, requires_grad=True)
        out = self.run(backend, args)
        grad_out = torch.randn_like(out)
        grads = torch.autograd.grad(out, [args[i] for i in sample.grad], grad_out)
        args64 = _float64(args)
        expected = torch.autograd.grad(self.reference64(*args64), [args64[i] for i in sample.grad], grad_out.double())
        rtol, atol = tolerance(dtype, self.exact)
        for position, got, want in zip(sample.grad, grads, expected):
            assert got.dtype == dtype, f"grad of argument {position} has dtype {got.dtype}"
            got = got.double()
            if dtype == torch.float32 and not self.exact:  # reductions: see tests/tolerances.py
                got, want = scaled_to_output(got, want)
            torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"arg {position}: {m}")

    def check_autocast(self, sample: Sample, backend, device, autocast_dtype, expected_cast, mixed, grad_values=True):
        """The op under torch.autocast(device, autocast_dtype), from float32 arguments, or (mixed) with the main
        input already in autocast_dtype, as an ATen op before it would leave it. `expected_cast(args, dtype)` gives
        the arguments as the op's autocast rule should cast them (the test's own statement of the rule); the output
        must equal the float64 reference on those, in the output's dtype's tolerance, and every gradient must come
        back in its argument's own dtype (float32 parameters get float32 gradients through the casts) and, with
        grad_values, equal the reference's."""
        self._skip_unsupported(backend, device, autocast_dtype)
        args = list(sample.materialize(device, torch.float32))
        main = sample.layout_args[0]
        if mixed:
            args[main] = args[main].to(autocast_dtype)
        for position in sample.grad:
            args[position] = args[position].detach().requires_grad_(True)
        cast = expected_cast(tuple(args), autocast_dtype)
        cast64 = _float64(cast)  # (before the run: batch_norm_act updates its running statistics in place)
        expected = self.reference64(*cast64)
        with torch.autocast(device, dtype=autocast_dtype):
            out = self.run(backend, args)
        out_dtype = cast[main].dtype
        assert out.dtype == out_dtype, f"under autocast the output is {out.dtype}, expected {out_dtype}"
        rtol, atol = tolerance(out_dtype, self.exact)
        if backend == "reference":
            # ATen's composition: autocast runs its inner ops (squeeze_excite's two convolutions) in the autocast
            # dtype whatever the fused op's rule does with its arguments; the output dtype still follows the rule.
            rtol, atol = tolerance(_narrower(out_dtype, autocast_dtype), self.exact)
        torch.testing.assert_close(out.double(), expected.double(), rtol=rtol, atol=atol)
        grad_out = torch.randn_like(out)
        grads = torch.autograd.grad(out, [args[i] for i in sample.grad], grad_out)
        want = torch.autograd.grad(expected, [cast64[i] for i in sample.grad], grad_out.double())
        for position, got, w in zip(sample.grad, grads, want):
            assert got.dtype == args[position].dtype, f"grad of argument {position} has dtype {got.dtype}"
            if not grad_values:
                continue
            # The gradient went through the op in the cast argument's dtype, then back through the cast, which
            # rounds it to the argument's dtype when that is the narrower (shuffle_cat's promotion): the reference's
            # is rounded likewise, and the narrower dtype's tolerance applies.
            narrower = _narrower(cast[position].dtype, args[position].dtype)
            rtol, atol = tolerance(narrower, self.exact)
            got, w = got.double(), w.to(args[position].dtype).double()
            if narrower == torch.float32 and not self.exact:  # reductions: see tests/tolerances.py
                got, w = scaled_to_output(got, w)
            torch.testing.assert_close(got, w, rtol=rtol, atol=atol, msg=lambda m: f"arg {position}: {m}")

    def check_gradcheck(self, sample: Sample, backend, device, layout="contiguous", gradgrad=True, fast_mode=False):
        """fast_mode: torch's fast gradcheck (random projections; for ops whose full Jacobians are slow).
        gradgrad=False: skip gradgradcheck (e.g. where the double backward is shared code tested elsewhere)."""
        args = sample.materialize(device, torch.float64, layout, requires_grad=True)

        def fn(*differentiable):
            full = list(args)
            for position, tensor in zip(sample.grad, differentiable):
                full[position] = tensor
            return self.run(backend, full)

        inputs = tuple(args[i] for i in sample.grad)
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=fast_mode)
        if gradgrad:
            assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=fast_mode)

    def check_grad_subsets(self, sample: Sample, backend, device):
        """Gradients when only some differentiable arguments take part, in float64 against the reference: each
        subset alone requiring grad, and each subset asked of torch.autograd.grad while all require grad. The
        backward maps the graph's edges (the tensor arguments that are given) to arguments and skips the
        gradients nobody asked for; an off-by-one there (an optional tensor left out before it) gives a
        gradient to the wrong argument, or none."""
        positions = sample.grad
        subsets = [tuple(p for bit, p in enumerate(positions) if mask >> bit & 1) for mask in range(1, 1 << len(positions))]
        for subset in subsets:
            for all_require_grad in (False, True):
                args = list(sample.materialize(device, torch.float64))
                for position in positions if all_require_grad else subset:
                    args[position] = args[position].detach().requires_grad_(True)
                out = self.run(backend, args)
                grad_out = torch.randn_like(out)
                got = torch.autograd.grad(out, [args[p] for p in subset], grad_out)
                args64 = [a.detach().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args]
                want = torch.autograd.grad(self.reference64(*args64), [args64[p] for p in subset], grad_out)
                rtol, atol = tolerance(torch.float64, self.exact)
                for position, g, w in zip(subset, got, want):
                    torch.testing.assert_close(g, w, rtol=rtol, atol=atol,
                                               msg=lambda m: f"subset {subset} ({all_require_grad=}), arg {position}: {m}")

    def custom_op(self, backend):
        impl = fastconv.ops.OPS[self.name].implementations[backend]
        if backend == "reference":
            pytest.skip("the reference backend is plain ATen, not a custom op")
        return impl

    def check_opcheck(self, sample: Sample, backend, device, layout="contiguous"):
        op = self.custom_op(backend)
        args = sample.materialize(device, torch.float32, layout, requires_grad=True)
        torch.library.opcheck(op, args)

    def check_compile(self, sample: Sample, backend, device, layout="contiguous", dtype=torch.float32):
        self._skip_unsupported(backend, device, dtype)
        args = sample.materialize(device, dtype, layout)
        torch._dynamo.reset()  # every test compiles afresh: no cache entries from other backends
        with fastconv.backend(backend):
            compiled = torch.compile(self.public, fullgraph=True)
            got = compiled(*args)
            want = self.public(*args)
        if backend != "reference":  # inductor may pick another layout for plain ATen; our ops keep theirs
            assert got.stride() == want.stride()
        rtol, atol = tolerance(dtype, self.exact)
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
