// The one schema registry of fastconv: every C++-backed op is defined here, and only here.
// Kernels register themselves per device in csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu
// (TORCH_LIBRARY_IMPL); fake kernels and autograd are registered from Python beside each wrapper.
#include <Python.h>

#include <torch/headeronly/version.h>
#include <torch/library.h>

#include <string>

// Importing fastconv._C runs the static initialisers below, which register the ops with the dispatcher.
// The module itself has no Python functions; everything goes through torch.ops.fastconv.*.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

namespace fastconv {

// Compile-time facts for `python -m fastconv info`: what this binary really contains,
// independent of the Python-side build record.
std::string cuda_build_info();  // csrc/cuda/build_info.cu when built with CUDA

static std::string build_info() {
  std::string info = "{\"torch_version\": \"" + std::to_string(TORCH_VERSION_MAJOR) + "." +
                     std::to_string(TORCH_VERSION_MINOR) + "." + std::to_string(TORCH_VERSION_PATCH) + "\"";
#ifdef FASTCONV_WITH_CUDA
  info += ", \"with_cuda\": true, " + cuda_build_info();
#else
  info += ", \"with_cuda\": false";
#endif
  return info + "}";
}

}  // namespace fastconv

TORCH_LIBRARY(fastconv, m) {
  m.def("_build_info() -> str", &fastconv::build_info);

  // channel_shuffle: equals torch.nn.functional.channel_shuffle; output keeps the input's memory format.
  m.def("channel_shuffle(Tensor input, int groups) -> Tensor");
  // The inverse permutation (a shuffle with C / groups groups); its own op so it has its own fake.
  m.def("_channel_shuffle_backward(Tensor grad_output, int groups) -> Tensor");

  // depthwise_conv2d: F.conv2d(..., groups=C) then an activation (None, relu, relu6, hardswish, silu); weight
  // (C*m, 1, kh, kw). padding is explicit (top, bottom, left, right): Python resolves "same"/"valid"/ints.
  m.def(
      "depthwise_conv2d(Tensor input, Tensor weight, Tensor? bias, SymInt[2] stride, SymInt[4] padding, "
      "SymInt[2] dilation, str? activation) -> Tensor");
  // (grad_input, grad_weight, grad_bias), each undefined where output_mask is false. `input` is needed for
  // grad_weight and for hardswish/silu (which recompute the pre-activation from input/weight/bias rather than
  // keep it alive); `output` (the forward result) for relu/relu6; input_size gives grad_input's shape.
  m.def(
      "_depthwise_conv2d_backward(Tensor grad_output, Tensor? input, Tensor weight, Tensor? bias, Tensor? output, "
      "SymInt[4] input_size, SymInt[2] stride, SymInt[4] padding, SymInt[2] dilation, str? activation, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
}
