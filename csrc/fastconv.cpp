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

  // squeeze_excite: equals torchvision.ops.SqueezeExcitation's forward (pool, fc1, activation, fc2, gate,
  // scale) with the fc weights of its two 1x1 convolutions; output keeps the input's memory format.
  m.def(
      "squeeze_excite(Tensor input, Tensor fc1_weight, Tensor? fc1_bias, Tensor fc2_weight, Tensor? fc2_bias, "
      "str activation=\"relu\", str gate=\"sigmoid\") -> Tensor");
  // Gradients for (input, fc1_weight, fc1_bias, fc2_weight, fc2_bias); a bias gradient is None when that
  // bias is None. Recomputes the pooled means in the same pass that reduces grad_output * input.
  m.def(
      "_squeeze_excite_backward(Tensor grad_output, Tensor input, Tensor fc1_weight, Tensor? fc1_bias, "
      "Tensor fc2_weight, Tensor? fc2_bias, str activation, str gate) -> (Tensor, Tensor, Tensor?, Tensor, Tensor?)");
}
