"""The C++ CPU kernels are compiled per instruction set (csrc/include/fastconv/cpu_isa.h) and the best one the
CPU has runs; the op test files cover that one. Here the lower ones run the same forward, backward and gradcheck
tests, in a subprocess with FASTCONV_CPU_ISA capping the choice (read once per process)."""
import os
import subprocess
import sys

import pytest

import fastconv

ISAS = ("baseline", "avx2", "avx512")
MULTI_ISA_OPS = ("tests/ops/test_depthwise_conv2d.py", "tests/ops/test_squeeze_excite.py",
                 "tests/ops/test_batch_norm_act.py")
SELECTION = ("(cpu-cpu and (test_forward or test_backward or test_gradcheck or test_activations)"
             " and not triton and not opcheck) or test_cpu_large_shapes")


def run_with_isa(isa, *args):
    env = dict(os.environ, FASTCONV_CPU_ISA=isa)
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=900,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("isa", [isa for isa in ISAS if ISAS.index(isa) < ISAS.index(fastconv.BUILD_INFO["binary"]
                                                                                    .get("cpu_isa", "baseline"))])
def test_lower_instruction_sets_pass_the_op_tests(isa):
    info = run_with_isa(isa, "-c", "import fastconv; print(fastconv.BUILD_INFO['binary']['cpu_isa'])")
    assert info.stdout.strip() == isa, info.stderr[-2000:]
    result = run_with_isa(isa, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:logging", "-k", SELECTION,
                          *MULTI_ISA_OPS)
    assert result.returncode == 0, result.stdout[-4000:]
