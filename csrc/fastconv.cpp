// The one schema registry of fastconv: every C++-backed op is defined here, and only here.
// Kernels register themselves per device in csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu
// (TORCH_LIBRARY_IMPL); the forward ops' autograd in csrc/autograd.cpp; fake kernels and the backward ops'
// autograd (the double backward) from Python beside each wrapper.
#include <Python.h>

#if __has_include(<torch/headeronly/version.h>)
#include <torch/headeronly/version.h>  // torch >= 2.9
#else
#include <torch/version.h>
#endif
#include <torch/library.h>

#include <string>

#include "fastconv/cpu_isa.h"

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
  // Not a compile-time fact: the instruction set the CPU kernels run with here (fastconv/cpu_isa.h).
  info += std::string(", \"cpu_isa\": \"") + cpu_isa_name(cpu_isa()) + "\"";
  return info + "}";
}

}  // namespace fastconv

TORCH_LIBRARY(fastconv, m) {
  m.def("_build_info() -> str", &fastconv::build_info);

  // channel_shuffle: equals torch.nn.functional.channel_shuffle; output keeps the input's memory format.
  m.def("channel_shuffle(Tensor input, int groups) -> Tensor");
  // The inverse permutation (a shuffle with C / groups groups); its own op so it has its own fake.
  m.def("_channel_shuffle_backward(Tensor grad_output, int groups) -> Tensor");

  // shuffle_cat: equals channel_shuffle(cat([a, b], 1), 2) in one pass: out[:, 2j] = a[:, j],
  // out[:, 2j + 1] = b[:, j]. Output channels_last when a is (csrc/shuffle_cat.h), else contiguous.
  m.def("shuffle_cat(Tensor a, Tensor b) -> Tensor");
  // The de-interleave: (grad_output[:, 0::2], grad_output[:, 1::2]), dense; its own op so it has its own fake.
  m.def("_shuffle_cat_backward(Tensor grad_output) -> (Tensor, Tensor)");
  // batch_norm_act: F.batch_norm then the activation (None, "relu", "relu6", "hardswish", "silu"). Returns
  // (output, save_mean, save_invstd) like aten's native_batch_norm: the batch statistics in training, the
  // running ones in eval (both in float32, or float64 for float64 input). running_mean/running_var are
  // updated in place in training, hence the (a!)/(b!) annotations (functionalization, torch.compile).
  m.def(
      "batch_norm_act(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, bool training, float momentum, float eps, str? activation) "
      "-> (Tensor, Tensor, Tensor)");
  // Returns (grad_input, grad_weight, grad_bias); training selects the batch-statistics formula.
  m.def(
      "_batch_norm_act_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor save_mean, Tensor save_invstd, bool training, str? activation) -> (Tensor, Tensor, Tensor)");
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
  // deform_conv2d: torchvision.ops.deform_conv2d (weight groups from input.shape[1] / weight.shape[1], offset
  // groups from offset.shape[1] / (2*kh*kw), DCNv2 modulation when mask is given). Output in input's layout.
  m.def(
      "deform_conv2d(Tensor input, Tensor offset, Tensor weight, Tensor? bias, SymInt[2] stride, SymInt[2] padding, "
      "SymInt[2] dilation, Tensor? mask) -> Tensor");
  // (grad_input, grad_offset, grad_mask, grad_weight, grad_bias), each undefined where output_mask is false;
  // grad_mask also when mask is None. grad_input/grad_offset/grad_mask keep input's/offset's/mask's layouts.
  m.def(
      "_deform_conv2d_backward(Tensor grad_output, Tensor input, Tensor offset, Tensor weight, Tensor? mask, "
      "SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation, bool[5] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // conv2d_act: F.conv2d (any groups) then an activation (None, relu, relu6, hardswish, silu): the eval form
  // of conv-BN-act after fold_bn. Padding explicit (top, bottom, left, right), like depthwise_conv2d.
  m.def(
      "conv2d_act(Tensor input, Tensor weight, Tensor? bias, SymInt[2] stride, SymInt[4] padding, "
      "SymInt[2] dilation, SymInt groups, str? activation) -> Tensor");
  // (grad_input, grad_weight, grad_bias), each undefined where output_mask is false; the same contract as
  // _depthwise_conv2d_backward: `input` for grad_weight and for hardswish/silu (pre-activation recomputed),
  // `output` for relu/relu6.
  m.def(
      "_conv2d_act_backward(Tensor grad_output, Tensor? input, Tensor weight, Tensor? bias, Tensor? output, "
      "SymInt[4] input_size, SymInt[2] stride, SymInt[4] padding, SymInt[2] dilation, SymInt groups, str? activation, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // shuffle_cat_conv2d_act: shuffle_cat(a, conv2d_act(input, weight, bias, ...)) -- the ShuffleNet v2 unit's tail
  // with the branch's last convolution writing the odd channels of the interleaved output (out[:, 2j + 1]) and
  // `a` copied into the even ones (out[:, 2j]) in the same pass, so the branch's result is never a tensor of its
  // own. `a` has the convolution's output shape; the output follows shuffle_cat's layout rule on `a`. The
  // backward is _shuffle_cat_backward then _conv2d_act_backward (no op of its own).
  m.def(
      "shuffle_cat_conv2d_act(Tensor a, Tensor input, Tensor weight, Tensor? bias, SymInt[2] stride, "
      "SymInt[4] padding, SymInt[2] dilation, SymInt groups, str? activation) -> Tensor");
}
