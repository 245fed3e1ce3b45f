// Autograd for the C++ ops (CPU and CUDA kernels), in C++.
//
// Each forward op gets an Autograd kernel here: a torch::autograd::Function whose backward calls the op's
// `_<op>_backward` op (never a raw kernel) and saves only what the requested gradients need.
//
// A deliberate departure from shared/DESIGN.md (section 3, step 3: register_autograd in Python; section 5: avoid
// torchvision's hand-rolled autograd classes), for speed, measured: registered from Python, each forward op's
// autograd kernel cost ~45-80 us of Python per call in grad mode (batch_norm_act on a tiny input: 131 us
// forward+backward against eager BN + ReLU's 51), and CPU training steps of ShuffleNetV2 at batch 2, 224 px ran at
// 0.85-0.96x of torchvision's with every kernel fix of session 9 in (x0.5 and x1.0); with this file, 0.99-1.03x
// (benches/RESULTS.md, session 9). What the design's rule protects stays: the fake kernels and the double backward
// remain Python beside each wrapper (fastconv/ops/<op>.py) -- unlike torchvision's classes, which raise on a double
// backward, the backward ops keep their Python autograd kernels, which rebuild the gradients from differentiable
// ATen ops. A plain backward runs with grad mode off, where that kernel would only re-dispatch; the backward ops are
// called below it then (BackwardCall), and through it when the engine records the backward (create_graph=True).
// torch.library.opcheck's autograd-registration, schema and AOT-dispatch checks run on every op in tests/ops.
//
// The Triton ops are Python custom ops and keep Python autograd (fastconv/ops/<op>.py).
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/SymInt.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace fastconv {
namespace {

using at::Tensor;
using OptionalTensor = std::optional<Tensor>;
using OptionalString = std::optional<c10::string_view>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The typed dispatcher handle of fastconv::<name> (looked up once per op).
template <class Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Scope of a backward op's call: below its (Python) autograd kernel unless grad mode records the backward.
class BackwardCall {
 public:
  BackwardCall() {
    if (!at::GradMode::is_enabled()) below_.emplace();
  }

 private:
  std::optional<at::AutoDispatchBelowADInplaceOrView> below_;
};

// A Function's gradient edges are its defined tensor arguments, in order; needs_input_grad takes the edge index.
// `present` lists whether each tensor argument (in order, up to and including the one asked about) is defined.
bool needs_grad(AutogradContext* ctx, std::initializer_list<bool> present) {
  if (!*(present.end() - 1)) return false;
  size_t edge = 0;
  for (auto it = present.begin(); it + 1 != present.end(); ++it) edge += *it ? 1 : 0;
  return ctx->needs_input_grad(edge);
}

bool defined(const OptionalTensor& t) { return t.has_value() && t->defined(); }
Tensor value_or_undefined(const OptionalTensor& t) { return defined(t) ? *t : Tensor(); }
OptionalTensor optional(const Tensor& t) { return t.defined() ? OptionalTensor(t) : std::nullopt; }
// Saved strings: the activation names are static in practice, but a string_view must not outlive the call.
c10::IValue save_string(const OptionalString& s) { return s ? c10::IValue(std::string(*s)) : c10::IValue(); }
OptionalString load_string(const c10::IValue& v) {
  return v.isNone() ? OptionalString() : OptionalString(v.toStringRef());
}
bool requires_grad(const Tensor& t) { return t.defined() && t.requires_grad(); }
bool requires_grad(const OptionalTensor& t) { return t.has_value() && requires_grad(*t); }
template <class T>
bool requires_grad(const T&) { return false; }  // a non-tensor argument

// Whether a call records a graph node: grad mode on and some tensor argument requiring grad.
template <class... Args>
bool records(const Args&... args) {
  return at::GradMode::is_enabled() && (requires_grad(args) || ...);
}

// The Autograd kernel of a non-mutating op: its Function where the call records a graph, else the op itself below
// autograd (Function::apply would still build a node and drop it).
template <class Function, class Signature, class... Args>
auto autograd_kernel(const c10::TypedOperatorHandle<Signature>& op, const Args&... args) {
  if (records(args...)) return Function::apply(args...);
  at::AutoDispatchBelowADInplaceOrView below;
  return op.call(args...);
}

bool saves_preactivation_inputs(const OptionalString& activation) {
  return activation && (*activation == "hardswish" || *activation == "silu");
}
bool saves_output(const OptionalString& activation) {
  return activation && (*activation == "relu" || *activation == "relu6");
}

// --- channel_shuffle ---------------------------------------------------------------------------------------
using ChannelShuffleSig = Tensor(const Tensor&, int64_t);

const c10::TypedOperatorHandle<ChannelShuffleSig>& channel_shuffle_op() {
  static const auto op = find_op<ChannelShuffleSig>("fastconv::channel_shuffle");
  return op;
}

struct ChannelShuffle : torch::autograd::Function<ChannelShuffle> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, int64_t groups) {
    ctx->saved_data["groups"] = groups;
    at::AutoDispatchBelowADInplaceOrView below;
    return channel_shuffle_op().call(input, groups);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<ChannelShuffleSig>("fastconv::_channel_shuffle_backward");
    BackwardCall scope;
    return {op.call(grads[0], ctx->saved_data["groups"].toInt()), Tensor()};
  }
};

Tensor channel_shuffle_autograd(const Tensor& input, int64_t groups) {
  return autograd_kernel<ChannelShuffle>(channel_shuffle_op(), input, groups);
}

// --- shuffle_cat -------------------------------------------------------------------------------------------
const c10::TypedOperatorHandle<Tensor(const Tensor&, const Tensor&)>& shuffle_cat_op() {
  static const auto op = find_op<Tensor(const Tensor&, const Tensor&)>("fastconv::shuffle_cat");
  return op;
}

struct ShuffleCat : torch::autograd::Function<ShuffleCat> {
  static Tensor forward(AutogradContext*, const Tensor& a, const Tensor& b) {
    at::AutoDispatchBelowADInplaceOrView below;
    return shuffle_cat_op().call(a, b);
  }
  static variable_list backward(AutogradContext*, variable_list grads) {
    static const auto op = find_op<std::tuple<Tensor, Tensor>(const Tensor&)>("fastconv::_shuffle_cat_backward");
    BackwardCall scope;
    auto [grad_a, grad_b] = op.call(grads[0]);
    return {grad_a, grad_b};
  }
};

Tensor shuffle_cat_autograd(const Tensor& a, const Tensor& b) {
  return autograd_kernel<ShuffleCat>(shuffle_cat_op(), a, b);
}

// --- batch_norm_act ----------------------------------------------------------------------------------------
using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;
using BatchNormActSig = Tensor3(const Tensor&, const OptionalTensor&, const OptionalTensor&, const OptionalTensor&,
                                const OptionalTensor&, bool, double, double, OptionalString);
using BatchNormActBackwardSig = Tensor3(const Tensor&, const Tensor&, const OptionalTensor&, const OptionalTensor&,
                                        const Tensor&, const Tensor&, bool, OptionalString);

const c10::TypedOperatorHandle<BatchNormActSig>& batch_norm_act_op() {
  static const auto op = find_op<BatchNormActSig>("fastconv::batch_norm_act");
  return op;
}

struct BatchNormAct : torch::autograd::Function<BatchNormAct> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const OptionalTensor& weight,
                               const OptionalTensor& bias, const OptionalTensor& running_mean,
                               const OptionalTensor& running_var, bool training, double momentum, double eps,
                               OptionalString activation) {
    ctx->set_materialize_grads(false);
    Tensor output, save_mean, save_invstd;
    {
      // Below Autograd only: the ADInplaceOrView kernel below bumps the running statistics' versions.
      at::AutoDispatchBelowAutograd below;
      std::tie(output, save_mean, save_invstd) = batch_norm_act_op().call(
          input, weight, bias, running_mean, running_var, training, momentum, eps, activation);
    }
    ctx->mark_non_differentiable({save_mean, save_invstd});
    ctx->save_for_backward({input, value_or_undefined(weight), value_or_undefined(bias), save_mean, save_invstd});
    ctx->saved_data["training"] = training;
    ctx->saved_data["activation"] = save_string(activation);
    return {output, save_mean, save_invstd};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list result(9);
    if (!grads[0].defined()) return result;
    const auto saved = ctx->get_saved_variables();
    const Tensor& weight = saved[1];
    const Tensor& bias = saved[2];
    static const auto op = find_op<BatchNormActBackwardSig>("fastconv::_batch_norm_act_backward");
    BackwardCall scope;
    auto [grad_input, grad_weight, grad_bias] =
        op.call(grads[0], saved[0], optional(weight), optional(bias), saved[3], saved[4],
                ctx->saved_data["training"].toBool(), load_string(ctx->saved_data["activation"]));
    if (needs_grad(ctx, {true})) result[0] = grad_input;
    if (needs_grad(ctx, {true, weight.defined()})) result[1] = grad_weight;
    if (needs_grad(ctx, {true, weight.defined(), bias.defined()})) result[2] = grad_bias;
    return result;
  }
};

Tensor3 batch_norm_act_autograd(const Tensor& input, const OptionalTensor& weight, const OptionalTensor& bias,
                                const OptionalTensor& running_mean, const OptionalTensor& running_var, bool training,
                                double momentum, double eps, OptionalString activation) {
  if (!records(input, weight, bias, running_mean, running_var)) {
    at::AutoDispatchBelowAutograd below;  // (the ADInplaceOrView kernel below still bumps the versions)
    return batch_norm_act_op().call(input, weight, bias, running_mean, running_var, training, momentum, eps,
                                    activation);
  }
  auto outputs =
      BatchNormAct::apply(input, weight, bias, running_mean, running_var, training, momentum, eps, activation);
  return {outputs[0], outputs[1], outputs[2]};
}

// In training the running statistics are written in place: bump their version counters, as ATen's in-place ops do.
Tensor3 batch_norm_act_ad_inplace_or_view(c10::DispatchKeySet keys, const Tensor& input, const OptionalTensor& weight,
                                          const OptionalTensor& bias, const OptionalTensor& running_mean,
                                          const OptionalTensor& running_var, bool training, double momentum,
                                          double eps, OptionalString activation) {
  Tensor3 result;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    result = batch_norm_act_op().redispatch(keys & c10::after_ADInplaceOrView_keyset, input, weight, bias,
                                            running_mean, running_var, training, momentum, eps, activation);
  }
  if (training) {  // eval reads the running statistics and writes nothing
    if (defined(running_mean)) torch::autograd::increment_version(*running_mean);
    if (defined(running_var)) torch::autograd::increment_version(*running_var);
  }
  return result;
}

// --- squeeze_excite ----------------------------------------------------------------------------------------
using SqueezeExciteSig = Tensor(const Tensor&, const Tensor&, const OptionalTensor&, const Tensor&,
                                const OptionalTensor&, c10::string_view, c10::string_view);
using SqueezeExciteBackwardSig = std::tuple<Tensor, Tensor, OptionalTensor, Tensor, OptionalTensor>(
    const Tensor&, const Tensor&, const Tensor&, const OptionalTensor&, const Tensor&, const OptionalTensor&,
    c10::string_view, c10::string_view);

const c10::TypedOperatorHandle<SqueezeExciteSig>& squeeze_excite_op() {
  static const auto op = find_op<SqueezeExciteSig>("fastconv::squeeze_excite");
  return op;
}

struct SqueezeExcite : torch::autograd::Function<SqueezeExcite> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& fc1_weight,
                        const OptionalTensor& fc1_bias, const Tensor& fc2_weight, const OptionalTensor& fc2_bias,
                        c10::string_view activation, c10::string_view gate) {
    // The backward recomputes the pooled means in its reduction pass, so it needs only the input and parameters.
    ctx->save_for_backward(
        {input, fc1_weight, value_or_undefined(fc1_bias), fc2_weight, value_or_undefined(fc2_bias)});
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["gate"] = std::string(gate);
    at::AutoDispatchBelowADInplaceOrView below;
    return squeeze_excite_op().call(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool has_b1 = saved[2].defined(), has_b2 = saved[4].defined();
    static const auto op = find_op<SqueezeExciteBackwardSig>("fastconv::_squeeze_excite_backward");
    BackwardCall scope;
    auto [grad_input, grad_w1, grad_b1, grad_w2, grad_b2] =
        op.call(grads[0], saved[0], saved[1], optional(saved[2]), saved[3], optional(saved[4]),
                ctx->saved_data["activation"].toStringRef(), ctx->saved_data["gate"].toStringRef());
    variable_list result(7);
    if (needs_grad(ctx, {true})) result[0] = grad_input;
    if (needs_grad(ctx, {true, true})) result[1] = grad_w1;
    if (needs_grad(ctx, {true, true, has_b1})) result[2] = value_or_undefined(grad_b1);
    if (needs_grad(ctx, {true, true, has_b1, true})) result[3] = grad_w2;
    if (needs_grad(ctx, {true, true, has_b1, true, has_b2})) result[4] = value_or_undefined(grad_b2);
    return result;
  }
};

Tensor squeeze_excite_autograd(const Tensor& input, const Tensor& fc1_weight, const OptionalTensor& fc1_bias,
                               const Tensor& fc2_weight, const OptionalTensor& fc2_bias, c10::string_view activation,
                               c10::string_view gate) {
  return autograd_kernel<SqueezeExcite>(squeeze_excite_op(), input, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                                        activation, gate);
}

// --- depthwise_conv2d and conv2d_act ----------------------------------------------------------------------------
// The same autograd contract: save the weight always, the input for grad_weight or for hardswish/silu (whose
// backward recomputes the pre-activation from input, weight and bias), the output for relu/relu6.
using Bool3 = std::array<bool, 3>;
using Ints = c10::SymIntArrayRef;
using DepthwiseSig = Tensor(const Tensor&, const Tensor&, const OptionalTensor&, Ints, Ints, Ints, OptionalString);
using DepthwiseBackwardSig = Tensor3(const Tensor&, const OptionalTensor&, const Tensor&, const OptionalTensor&,
                                     const OptionalTensor&, Ints, Ints, Ints, Ints, OptionalString, Bool3);
using Conv2dActSig = Tensor(const Tensor&, const Tensor&, const OptionalTensor&, Ints, Ints, Ints, c10::SymInt,
                            OptionalString);
using Conv2dActBackwardSig = Tensor3(const Tensor&, const OptionalTensor&, const Tensor&, const OptionalTensor&,
                                     const OptionalTensor&, Ints, Ints, Ints, Ints, c10::SymInt, OptionalString,
                                     Bool3);

void save_conv_inputs(AutogradContext* ctx, const Tensor& input, const Tensor& weight, const OptionalTensor& bias,
                      const Tensor& output, Ints stride, Ints padding, Ints dilation, OptionalString activation) {
  const bool wants_input = input.requires_grad(), wants_weight = weight.requires_grad();
  const bool wants_bias = defined(bias) && bias->requires_grad();
  const bool any = wants_input || wants_weight || wants_bias;
  const bool preactivation = saves_preactivation_inputs(activation) && any;
  ctx->save_for_backward({wants_weight || preactivation ? input : Tensor(), weight,
                          preactivation ? value_or_undefined(bias) : Tensor(),
                          saves_output(activation) && any ? output : Tensor()});
  ctx->saved_data["input_size"] = input.sym_sizes();
  ctx->saved_data["stride"] = stride;
  ctx->saved_data["padding"] = padding;
  ctx->saved_data["dilation"] = dilation;
  ctx->saved_data["activation"] = save_string(activation);
  ctx->saved_data["has_bias"] = defined(bias);
}

// (grad_input, grad_weight, grad_bias) wanted: the edges of the convolution's input, weight and bias, the
// forward's first three tensor arguments, or its second to fourth with `leading` (shuffle_cat_conv2d_act's a).
Bool3 conv_output_mask(AutogradContext* ctx, bool leading) {
  const bool has_bias = ctx->saved_data["has_bias"].toBool();
  if (leading) {
    return {needs_grad(ctx, {true, true}), needs_grad(ctx, {true, true, true}),
            needs_grad(ctx, {true, true, true, has_bias})};
  }
  return {needs_grad(ctx, {true}), needs_grad(ctx, {true, true}), needs_grad(ctx, {true, true, has_bias})};
}

// The convolution's gradients through `call` (the backward op), placed at forward arguments first..first+2.
template <class Call>
variable_list conv_backward(AutogradContext* ctx, size_t num_inputs, Call&& call, size_t first = 0) {
  const auto saved = ctx->get_saved_variables();
  const Bool3 mask = conv_output_mask(ctx, first > 0);
  variable_list result(num_inputs);
  if (!mask[0] && !mask[1] && !mask[2]) return result;
  const auto input_size = ctx->saved_data["input_size"].toSymIntVector();
  const auto stride = ctx->saved_data["stride"].toSymIntVector();
  const auto padding = ctx->saved_data["padding"].toSymIntVector();
  const auto dilation = ctx->saved_data["dilation"].toSymIntVector();
  BackwardCall scope;
  auto [grad_input, grad_weight, grad_bias] =
      call(optional(saved[0]), saved[1], optional(saved[2]), optional(saved[3]), Ints(input_size), Ints(stride),
           Ints(padding), Ints(dilation), load_string(ctx->saved_data["activation"]), mask);
  if (mask[0]) result[first] = grad_input;
  if (mask[1]) result[first + 1] = grad_weight;
  if (mask[2]) result[first + 2] = grad_bias;
  return result;
}

const c10::TypedOperatorHandle<DepthwiseSig>& depthwise_conv2d_op() {
  static const auto op = find_op<DepthwiseSig>("fastconv::depthwise_conv2d");
  return op;
}

struct DepthwiseConv2d : torch::autograd::Function<DepthwiseConv2d> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight, const OptionalTensor& bias,
                        Ints stride, Ints padding, Ints dilation, OptionalString activation) {
    Tensor output;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      output = depthwise_conv2d_op().call(input, weight, bias, stride, padding, dilation, activation);
    }
    save_conv_inputs(ctx, input, weight, bias, output, stride, padding, dilation, activation);
    return output;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<DepthwiseBackwardSig>("fastconv::_depthwise_conv2d_backward");
    return conv_backward(ctx, 7, [&](auto&&... args) { return op.call(grads[0], args...); });
  }
};

Tensor depthwise_conv2d_autograd(const Tensor& input, const Tensor& weight, const OptionalTensor& bias, Ints stride,
                                 Ints padding, Ints dilation, OptionalString activation) {
  return autograd_kernel<DepthwiseConv2d>(depthwise_conv2d_op(), input, weight, bias, stride, padding, dilation,
                                          activation);
}

const c10::TypedOperatorHandle<Conv2dActSig>& conv2d_act_op() {
  static const auto op = find_op<Conv2dActSig>("fastconv::conv2d_act");
  return op;
}

struct Conv2dAct : torch::autograd::Function<Conv2dAct> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight, const OptionalTensor& bias,
                        Ints stride, Ints padding, Ints dilation, const c10::SymInt& groups,
                        OptionalString activation) {
    Tensor output;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      output = conv2d_act_op().call(input, weight, bias, stride, padding, dilation, groups, activation);
    }
    save_conv_inputs(ctx, input, weight, bias, output, stride, padding, dilation, activation);
    ctx->saved_data["groups"] = groups;
    return output;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<Conv2dActBackwardSig>("fastconv::_conv2d_act_backward");
    const c10::SymInt groups = ctx->saved_data["groups"].toSymInt();
    return conv_backward(ctx, 8, [&](const OptionalTensor& input, const Tensor& weight, const OptionalTensor& bias,
                                     const OptionalTensor& output, Ints input_size, Ints stride, Ints padding,
                                     Ints dilation, OptionalString activation, Bool3 mask) {
      return op.call(grads[0], input, weight, bias, output, input_size, stride, padding, dilation, groups,
                     activation, mask);
    });
  }
};

Tensor conv2d_act_autograd(const Tensor& input, const Tensor& weight, const OptionalTensor& bias, Ints stride,
                           Ints padding, Ints dilation, c10::SymInt groups, OptionalString activation) {
  return autograd_kernel<Conv2dAct>(conv2d_act_op(), input, weight, bias, stride, padding, dilation, groups,
                                    activation);
}

// --- shuffle_cat_conv2d_act: shuffle_cat's backward (the de-interleave), then conv2d_act's on the odd half ------
using ShuffleCatConv2dActSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptionalTensor&, Ints, Ints,
                                      Ints, c10::SymInt, OptionalString);

const c10::TypedOperatorHandle<ShuffleCatConv2dActSig>& shuffle_cat_conv2d_act_op() {
  static const auto op = find_op<ShuffleCatConv2dActSig>("fastconv::shuffle_cat_conv2d_act");
  return op;
}

struct ShuffleCatConv2dAct : torch::autograd::Function<ShuffleCatConv2dAct> {
  static Tensor forward(AutogradContext* ctx, const Tensor& a, const Tensor& input, const Tensor& weight,
                        const OptionalTensor& bias, Ints stride, Ints padding, Ints dilation, const c10::SymInt& groups,
                        OptionalString activation) {
    Tensor output;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      output = shuffle_cat_conv2d_act_op().call(a, input, weight, bias, stride, padding, dilation, groups, activation);
    }
    // The whole output is saved (relu/relu6); the backward takes the convolution's half of it, a strided view.
    save_conv_inputs(ctx, input, weight, bias, output, stride, padding, dilation, activation);
    ctx->saved_data["groups"] = groups;
    return output;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto split = find_op<std::tuple<Tensor, Tensor>(const Tensor&)>("fastconv::_shuffle_cat_backward");
    static const auto op = find_op<Conv2dActBackwardSig>("fastconv::_conv2d_act_backward");
    Tensor grad_a, grad_b;
    {
      BackwardCall scope;
      std::tie(grad_a, grad_b) = split.call(grads[0]);
    }
    const c10::SymInt groups = ctx->saved_data["groups"].toSymInt();
    variable_list result = conv_backward(
        ctx, 9,
        [&](const OptionalTensor& input, const Tensor& weight, const OptionalTensor& bias, const OptionalTensor& output,
            Ints input_size, Ints stride, Ints padding, Ints dilation, OptionalString activation, Bool3 mask) {
          const OptionalTensor odd =
              defined(output) ? OptionalTensor(output->slice(1, 1, std::nullopt, 2)) : std::nullopt;
          return op.call(grad_b, input, weight, bias, odd, input_size, stride, padding, dilation, groups, activation,
                         mask);
        },
        /*first=*/1);
    if (needs_grad(ctx, {true})) result[0] = grad_a;
    return result;
  }
};

Tensor shuffle_cat_conv2d_act_autograd(const Tensor& a, const Tensor& input, const Tensor& weight,
                                       const OptionalTensor& bias, Ints stride, Ints padding, Ints dilation,
                                       c10::SymInt groups, OptionalString activation) {
  return autograd_kernel<ShuffleCatConv2dAct>(shuffle_cat_conv2d_act_op(), a, input, weight, bias, stride, padding,
                                              dilation, groups, activation);
}

// --- deform_conv2d -----------------------------------------------------------------------------------------
using DeformSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptionalTensor&, Ints, Ints, Ints,
                         const OptionalTensor&);
using DeformBackwardSig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptionalTensor&, Ints, Ints, Ints,
    std::array<bool, 5>);

const c10::TypedOperatorHandle<DeformSig>& deform_conv2d_op() {
  static const auto op = find_op<DeformSig>("fastconv::deform_conv2d");
  return op;
}

struct DeformConv2d : torch::autograd::Function<DeformConv2d> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& offset, const Tensor& weight,
                        const OptionalTensor& bias, Ints stride, Ints padding, Ints dilation,
                        const OptionalTensor& mask) {
    ctx->save_for_backward({input, offset, weight, value_or_undefined(mask)});
    ctx->saved_data["has_bias"] = defined(bias);
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    at::AutoDispatchBelowADInplaceOrView below;
    return deform_conv2d_op().call(input, offset, weight, bias, stride, padding, dilation, mask);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool(), has_mask = saved[3].defined();
    // Edges in argument order: input, offset, weight, bias (if given), mask (if given).
    const std::array<bool, 5> mask{needs_grad(ctx, {true}), needs_grad(ctx, {true, true}),
                                   needs_grad(ctx, {true, true, true, has_bias, has_mask}),
                                   needs_grad(ctx, {true, true, true}), needs_grad(ctx, {true, true, true, has_bias})};
    const auto stride = ctx->saved_data["stride"].toSymIntVector();
    const auto padding = ctx->saved_data["padding"].toSymIntVector();
    const auto dilation = ctx->saved_data["dilation"].toSymIntVector();
    static const auto op = find_op<DeformBackwardSig>("fastconv::_deform_conv2d_backward");
    BackwardCall scope;
    auto [grad_input, grad_offset, grad_mask, grad_weight, grad_bias] =
        op.call(grads[0], saved[0], saved[1], saved[2], optional(saved[3]), Ints(stride), Ints(padding),
                Ints(dilation), mask);
    variable_list result(8);
    if (mask[0]) result[0] = grad_input;
    if (mask[1]) result[1] = grad_offset;
    if (mask[3]) result[2] = grad_weight;
    if (mask[4]) result[3] = grad_bias;
    if (mask[2]) result[7] = grad_mask;
    return result;
  }
};

Tensor deform_conv2d_autograd(const Tensor& input, const Tensor& offset, const Tensor& weight,
                              const OptionalTensor& bias, Ints stride, Ints padding, Ints dilation,
                              const OptionalTensor& mask) {
  return autograd_kernel<DeformConv2d>(deform_conv2d_op(), input, offset, weight, bias, stride, padding, dilation,
                                       mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, Autograd, m) {
  m.impl("channel_shuffle", &channel_shuffle_autograd);
  m.impl("shuffle_cat", &shuffle_cat_autograd);
  m.impl("batch_norm_act", &batch_norm_act_autograd);
  m.impl("squeeze_excite", &squeeze_excite_autograd);
  m.impl("depthwise_conv2d", &depthwise_conv2d_autograd);
  m.impl("conv2d_act", &conv2d_act_autograd);
  m.impl("shuffle_cat_conv2d_act", &shuffle_cat_conv2d_act_autograd);
  m.impl("deform_conv2d", &deform_conv2d_autograd);
}

TORCH_LIBRARY_IMPL(fastconv, ADInplaceOrView, m) {
  m.impl("batch_norm_act", &batch_norm_act_ad_inplace_or_view);
}

}  // namespace fastconv
