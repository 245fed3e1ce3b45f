// deform_conv2d on the CPU, forward and backward, any strides (NCHW, channels_last, views: every tensor is
// addressed through its strides, so nothing is copied), float accumulation (double for float64).
//
// Bounded workspace: nothing of size C*kh*kw x N*H_out*W_out is ever built. The forward walks output tiles
// (an image n x T output pixels, in parallel): it samples the tile's bilinear points once per offset group
// and tap, gathers the (C/groups*kh*kw) x T column tile of one weight group into a small buffer, and
// multiplies it by that group's weight with at::mm (BLAS) straight into the output.
// The backward walks channel blocks (B channels inside one weight group and one offset group, in parallel);
// each block loops over images and pixel tiles in a fixed order and
//   - forms its rows of grad_columns = weight^T @ grad_output for the tile (at::mm),
//   - scatters them into its own channels of grad_input (no other task writes there: no races),
//   - sums its channels' share of grad_offset/grad_mask into its own slice of a partial buffer
//     (blocks x N x 3*kh*kw x H_out*W_out), reduced over the blocks of an offset group in block order,
//   - accumulates grad_weight for its own weight columns with addmm of grad_output and the sampled columns.
// Every sum therefore runs in an order fixed by the shapes alone: deterministic for any thread count.
#include "deform_conv2d.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <numeric>
#include <tuple>
#include <vector>

namespace fastconv {
namespace {

// Elements of one column tile (acc_t) the forward aims for: fits the L2 of one core with the weight panel.
constexpr int64_t kColumnTileElements = 1 << 17;
constexpr int64_t kBackwardTilePixels = 256;
constexpr int64_t kMaxChannelBlock = 32;
// Multiply-adds per task below which at::parallel_for keeps tasks together (tiny problems run inline rather
// than waking the thread pool: gradcheck calls the op thousands of times).
constexpr int64_t kGrainWork = 1 << 16;

int64_t grain_for(int64_t work_per_task) { return std::max<int64_t>(1, kGrainWork / std::max<int64_t>(work_per_task, 1)); }

struct Strides4 {
  int64_t n = 0, c = 0, h = 0, w = 0;
  Strides4() = default;
  explicit Strides4(const at::Tensor& t) : n(t.stride(0)), c(t.stride(1)), h(t.stride(2)), w(t.stride(3)) {}
};

// One sampling point of one (offset group, tap, output pixel): its bilinear corners, their interpolation
// weights times the modulation mask (the forward's and grad_input's factors) and what grad_offset needs.
template <typename acc_t>
struct SamplePoint {
  int64_t index[4];
  acc_t weight[4];  // interpolation weight * mask; zero for an invalid corner or outside (-1, H) x (-1, W)
  bool valid[4];    // corner inside the image (get_coordinate_weight's test; no range test)
  bool inside;      // the forward's (-1, H) x (-1, W) range test
  acc_t lh, lw, mask;
};

template <typename scalar_t, typename acc_t>
struct Sampler {
  const DeformGeometry& g;
  const scalar_t* offset;
  Strides4 offset_strides;
  const scalar_t* mask;  // nullptr: DCNv1, mask = 1
  int64_t mask_sn = 0, mask_sc = 0, mask_sh = 0, mask_sw = 0;
  int64_t in_sh, in_sw;

  // Points for (offset group og, every tap, pixels [p0, p0 + count)) of image n, at points[k * count + t].
  void sample(int64_t n, int64_t og, int64_t p0, int64_t count, SamplePoint<acc_t>* points) const {
    const int64_t taps = g.taps();
    for (int64_t k = 0; k < taps; ++k) {
      const int64_t i = k / g.kernel_w, j = k - i * g.kernel_w;
      const scalar_t* off_y = offset + n * offset_strides.n + (og * 2 * taps + 2 * k) * offset_strides.c;
      const scalar_t* off_x = off_y + offset_strides.c;
      const scalar_t* m = mask ? mask + n * mask_sn + (og * taps + k) * mask_sc : nullptr;
      for (int64_t t = 0; t < count; ++t) {
        const int64_t p = p0 + t;
        const int64_t oh = p / g.out_w, ow = p - oh * g.out_w;
        const int64_t at_offset = oh * offset_strides.h + ow * offset_strides.w;
        const acc_t y = static_cast<acc_t>(oh * g.stride_h - g.pad_h + i * g.dilation_h) +
                        static_cast<acc_t>(off_y[at_offset]);
        const acc_t x = static_cast<acc_t>(ow * g.stride_w - g.pad_w + j * g.dilation_w) +
                        static_cast<acc_t>(off_x[at_offset]);
        const BilinearPoint<acc_t> b(y, x, g.in_h, g.in_w, in_sh, in_sw);
        SamplePoint<acc_t>& s = points[k * count + t];
        s.mask = m ? static_cast<acc_t>(m[oh * mask_sh + ow * mask_sw]) : acc_t(1);
        acc_t w[4];
        b.weights(w);
        for (int c = 0; c < 4; ++c) {
          s.index[c] = b.index[c];
          s.valid[c] = b.valid[c];
          s.weight[c] = w[c] * s.mask;
        }
        s.inside = b.inside;
        s.lh = b.lh;
        s.lw = b.lw;
      }
    }
  }
};

template <typename scalar_t, typename acc_t>
Sampler<scalar_t, acc_t> make_sampler(const DeformGeometry& g, const at::Tensor& input, const at::Tensor& offset,
                                      const std::optional<at::Tensor>& mask) {
  Sampler<scalar_t, acc_t> s{g, offset.const_data_ptr<scalar_t>(), Strides4(offset), nullptr};
  if (g.use_mask) {
    s.mask = mask->const_data_ptr<scalar_t>();
    s.mask_sn = mask->stride(0);
    s.mask_sc = mask->stride(1);
    s.mask_sh = mask->stride(2);
    s.mask_sw = mask->stride(3);
  }
  s.in_sh = input.stride(2);
  s.in_sw = input.stride(3);
  return s;
}

template <typename acc_t>
at::ScalarType acc_type() {
  return c10::CppTypeToScalarType<acc_t>::value;
}

// A plain row-major acc_t matrix view of a buffer (no allocation), for at::mm.
template <typename acc_t>
at::Tensor matrix(acc_t* data, int64_t rows, int64_t cols, int64_t leading) {
  return at::from_blob(data, {rows, cols}, {leading, 1}, at::TensorOptions().dtype(acc_type<acc_t>()));
}

// ---------------------------------------------------------------------------------------------- forward
template <typename scalar_t>
void forward_kernel(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& mask, at::Tensor& out,
                    const DeformGeometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t taps = g.taps(), pixels = g.pixels();
  const int64_t cg = g.channels_per_weight_group(), og_out = g.outputs_per_weight_group();
  const int64_t columns = cg * taps;
  const int64_t cpog = g.channels_per_offset_group();
  // (C_out, C_in/groups*kh*kw) in acc_t: the weight is small, one conversion per call.
  // detach: the kernels run below autograd, and at::mm_out refuses operands that require grad.
  const at::Tensor w = weight.detach().to(acc_type<acc_t>()).contiguous().view({g.weight_groups, og_out, columns});
  std::vector<acc_t> bias_acc(g.out_channels, acc_t(0));
  if (bias.has_value() && bias->defined()) {
    const at::Tensor b = bias->to(acc_type<acc_t>()).contiguous();
    std::copy_n(b.const_data_ptr<acc_t>(), g.out_channels, bias_acc.begin());
  }
  const int64_t tile = std::max<int64_t>(16, std::min<int64_t>({pixels, 1024, kColumnTileElements / columns}));
  const int64_t tiles_per_image = (pixels + tile - 1) / tile;
  const Sampler<scalar_t, acc_t> sampler = make_sampler<scalar_t, acc_t>(g, input, offset, mask);
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const Strides4 is(input), os(out);
  scalar_t* dst = out.mutable_data_ptr<scalar_t>();

  const int64_t job_work = tile * columns * g.out_channels;
  at::parallel_for(0, g.batch * tiles_per_image, grain_for(job_work), [&](int64_t begin, int64_t end) {
    std::vector<SamplePoint<acc_t>> points(g.offset_groups * taps * tile);
    std::vector<acc_t> cols(columns * tile), result(og_out * tile);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t n = job / tiles_per_image;
      const int64_t p0 = (job - n * tiles_per_image) * tile;
      const int64_t count = std::min(tile, pixels - p0);
      for (int64_t og = 0; og < g.offset_groups; ++og) {
        sampler.sample(n, og, p0, count, points.data() + og * taps * count);
      }
      for (int64_t group = 0; group < g.weight_groups; ++group) {
        for (int64_t cl = 0; cl < cg; ++cl) {
          const int64_t c = group * cg + cl;
          const scalar_t* plane = in + n * is.n + c * is.c;
          const SamplePoint<acc_t>* pts = points.data() + (c / cpog) * taps * count;
          acc_t* row = cols.data() + cl * taps * count;  // rows (c, k) in the weight's (C/groups, kh, kw) order
          for (int64_t q = 0; q < taps * count; ++q) {
            const SamplePoint<acc_t>& s = pts[q];
            row[q] = s.weight[0] * static_cast<acc_t>(plane[s.index[0]]) +
                     s.weight[1] * static_cast<acc_t>(plane[s.index[1]]) +
                     s.weight[2] * static_cast<acc_t>(plane[s.index[2]]) +
                     s.weight[3] * static_cast<acc_t>(plane[s.index[3]]);
          }
        }
        at::Tensor res = matrix(result.data(), og_out, count, count);
        at::mm_out(res, w[group], matrix(cols.data(), columns, count, count));
        for (int64_t ol = 0; ol < og_out; ++ol) {
          const int64_t o = group * og_out + ol;
          const acc_t* r = result.data() + ol * count;
          scalar_t* out_plane = dst + n * os.n + o * os.c;
          for (int64_t t = 0; t < count; ++t) {
            const int64_t p = p0 + t;
            const int64_t oh = p / g.out_w, ow = p - oh * g.out_w;
            out_plane[oh * os.h + ow * os.w] = static_cast<scalar_t>(r[t] + bias_acc[o]);
          }
        }
      }
    }
  });
}

at::Tensor deform_conv2d_cpu(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, const std::optional<at::Tensor>& mask) {
  const DeformGeometry g = check_deform_conv2d_args(input, offset, weight, bias, stride, padding, dilation, mask);
  at::Tensor out = at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                             input.options().memory_format(deform_memory_format(input)));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_conv2d_cpu", [&] {
    forward_kernel<scalar_t>(input, offset, weight, bias, mask, out, g);
  });
  return out;
}

// --------------------------------------------------------------------------------------------- backward
// The channel block: the largest divisor of gcd(C/groups, C/offset_groups) up to kMaxChannelBlock, so a block
// never straddles a weight group or an offset group.
int64_t channel_block(const DeformGeometry& g) {
  const int64_t common = std::gcd(g.channels_per_weight_group(), g.channels_per_offset_group());
  for (int64_t b = std::min(common, kMaxChannelBlock); b > 1; --b) {
    if (common % b == 0) return b;
  }
  return 1;
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
                     const at::Tensor& weight, const std::optional<at::Tensor>& mask, const DeformGeometry& g,
                     at::Tensor& grad_input_acc, at::Tensor& partial, at::Tensor& grad_weight_acc,
                     bool want_columns_grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t taps = g.taps(), pixels = g.pixels();
  const int64_t cg = g.channels_per_weight_group(), og_out = g.outputs_per_weight_group();
  const int64_t columns = cg * taps;
  const int64_t cpog = g.channels_per_offset_group();
  const int64_t block = channel_block(g);
  const int64_t blocks = g.in_channels / block;
  const int64_t tile = std::min<int64_t>(kBackwardTilePixels, std::max<int64_t>(pixels, 1));
  const bool want_weight = grad_weight_acc.defined();
  const bool want_offset = partial.defined();
  // detach: the kernels run below autograd, and at::mm_out refuses operands that require grad.
  const at::Tensor w = weight.detach().to(acc_type<acc_t>()).contiguous().view({g.weight_groups, og_out, columns});
  const Sampler<scalar_t, acc_t> sampler = make_sampler<scalar_t, acc_t>(g, input, offset, mask);
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
  const Strides4 is(input), gs(grad_output);
  acc_t* gin = want_columns_grad && grad_input_acc.defined() ? grad_input_acc.mutable_data_ptr<acc_t>() : nullptr;
  const Strides4 gis = grad_input_acc.defined() ? Strides4(grad_input_acc) : is;
  acc_t* part = want_offset ? partial.mutable_data_ptr<acc_t>() : nullptr;
  acc_t* gw = want_weight ? grad_weight_acc.mutable_data_ptr<acc_t>() : nullptr;

  const int64_t block_work = g.batch * pixels * taps * block * (og_out + 8);
  at::parallel_for(0, blocks, grain_for(block_work), [&](int64_t begin, int64_t end) {
    std::vector<SamplePoint<acc_t>> points(taps * tile);
    std::vector<acc_t> go_tile(og_out * tile), grad_cols(block * taps * tile), cols(block * taps * tile);
    std::vector<acc_t> grad_point(3 * taps * tile);  // d/d offset_y, d/d offset_x, d/d mask per (tap, pixel)
    std::vector<acc_t> gw_block(og_out * block * taps);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * block;
      const int64_t group = c0 / cg, og = c0 / cpog;
      const int64_t c0_local = c0 - group * cg;
      // This block's columns of the group's weight: (C_out/groups, block*kh*kw), leading dimension `columns`.
      const at::Tensor w_block = w[group].narrow(1, c0_local * taps, block * taps);
      at::Tensor gw_mat = matrix(gw_block.data(), og_out, block * taps, block * taps);
      std::fill(gw_block.begin(), gw_block.end(), acc_t(0));
      for (int64_t n = 0; n < g.batch; ++n) {
        for (int64_t p0 = 0; p0 < pixels; p0 += tile) {
          const int64_t count = std::min(tile, pixels - p0);
          const int64_t span = taps * count;
          sampler.sample(n, og, p0, count, points.data());
          for (int64_t ol = 0; ol < og_out; ++ol) {
            const scalar_t* src = go + n * gs.n + (group * og_out + ol) * gs.c;
            for (int64_t t = 0; t < count; ++t) {
              const int64_t p = p0 + t;
              const int64_t oh = p / g.out_w, ow = p - oh * g.out_w;
              go_tile[ol * count + t] = static_cast<acc_t>(src[oh * gs.h + ow * gs.w]);
            }
          }
          const at::Tensor go_mat = matrix(go_tile.data(), og_out, count, count);
          if (want_columns_grad) {
            at::Tensor gc = matrix(grad_cols.data(), block * taps, count, count);
            at::mm_out(gc, w_block.t(), go_mat);
            std::fill(grad_point.begin(), grad_point.begin() + 3 * span, acc_t(0));
          }
          for (int64_t cb = 0; cb < block; ++cb) {
            const int64_t c = c0 + cb;
            const scalar_t* plane = in + n * is.n + c * is.c;
            acc_t* gplane = gin ? gin + n * gis.n + c * gis.c : nullptr;
            const acc_t* gcol = grad_cols.data() + cb * span;
            acc_t* col = cols.data() + cb * span;
            for (int64_t q = 0; q < span; ++q) {
              const SamplePoint<acc_t>& s = points[q];
              acc_t v[4];
              for (int i = 0; i < 4; ++i) v[i] = s.valid[i] ? static_cast<acc_t>(plane[s.index[i]]) : acc_t(0);
              const acc_t sampled = s.weight[0] * v[0] + s.weight[1] * v[1] + s.weight[2] * v[2] + s.weight[3] * v[3];
              if (want_weight) col[q] = sampled;
              if (!want_columns_grad) continue;
              const acc_t gv = gcol[q];
              if (gplane) {
                for (int i = 0; i < 4; ++i) {
                  if (s.weight[i] != acc_t(0)) gplane[s.index[i]] += gv * s.weight[i];
                }
              }
              if (part) {
                // torchvision's get_coordinate_weight (corner validity only, no range test) times the mask.
                const acc_t dy = s.lw * (v[3] - v[1]) + (acc_t(1) - s.lw) * (v[2] - v[0]);
                const acc_t dx = s.lh * (v[3] - v[2]) + (acc_t(1) - s.lh) * (v[1] - v[0]);
                grad_point[q] += gv * s.mask * dy;
                grad_point[span + q] += gv * s.mask * dx;
                // d out / d mask: the unmodulated sample (zero outside (-1, H) x (-1, W)).
                if (s.inside) {
                  const acc_t hh = acc_t(1) - s.lh, hw = acc_t(1) - s.lw;
                  grad_point[2 * span + q] +=
                      gv * (hh * hw * v[0] + hh * s.lw * v[1] + s.lh * hw * v[2] + s.lh * s.lw * v[3]);
                }
              }
            }
          }
          if (part) {
            // This block's slice of the partial sums: [blk][n][3][k][p].
            for (int64_t r = 0; r < 3; ++r) {
              for (int64_t k = 0; k < taps; ++k) {
                acc_t* dst = part + ((blk * g.batch + n) * 3 + r) * taps * pixels + k * pixels + p0;
                std::copy_n(grad_point.data() + r * span + k * count, count, dst);
              }
            }
          }
          if (want_weight) {
            at::addmm_out(gw_mat, gw_mat, go_mat, matrix(cols.data(), block * taps, count, count).t());
          }
        }
      }
      if (want_weight) {
        for (int64_t ol = 0; ol < og_out; ++ol) {
          std::copy_n(gw_block.data() + ol * block * taps, block * taps,
                      gw + (group * og_out + ol) * columns + c0_local * taps);
        }
      }
    }
  });
}

// Strides equal on every dimension that has more than one element (the others are never stepped along).
bool same_addressing(const at::Tensor& a, const at::Tensor& b) {
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

// grad_offset[n, og*2*kk + 2k (+1), p] and grad_mask[n, og*kk + k, p]: the partial sums of the offset group's
// channel blocks, added in block order.
template <typename scalar_t, typename acc_t>
void reduce_partials(const at::Tensor& partial, const DeformGeometry& g, int64_t block, at::Tensor& grad_offset,
                     at::Tensor& grad_mask) {
  const int64_t taps = g.taps(), pixels = g.pixels();
  const int64_t per_group = g.channels_per_offset_group() / block;
  const acc_t* part = partial.const_data_ptr<acc_t>();
  scalar_t* goff = grad_offset.defined() ? grad_offset.mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* gmask = grad_mask.defined() ? grad_mask.mutable_data_ptr<scalar_t>() : nullptr;
  const Strides4 os = grad_offset.defined() ? Strides4(grad_offset) : Strides4();
  const Strides4 ms = grad_mask.defined() ? Strides4(grad_mask) : Strides4();
  at::parallel_for(0, g.batch * g.offset_groups * taps, grain_for(3 * pixels * per_group), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sums(3 * pixels);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t n = job / (g.offset_groups * taps);
      const int64_t og = (job / taps) % g.offset_groups;
      const int64_t k = job % taps;
      std::fill(sums.begin(), sums.end(), acc_t(0));
      for (int64_t b = og * per_group; b < (og + 1) * per_group; ++b) {
        for (int64_t r = 0; r < 3; ++r) {
          const acc_t* src = part + ((b * g.batch + n) * 3 + r) * taps * pixels + k * pixels;
          acc_t* dst = sums.data() + r * pixels;
          for (int64_t p = 0; p < pixels; ++p) dst[p] += src[p];
        }
      }
      for (int64_t p = 0; p < pixels; ++p) {
        const int64_t oh = p / g.out_w, ow = p - oh * g.out_w;
        if (goff) {
          scalar_t* base = goff + n * os.n + (og * 2 * taps + 2 * k) * os.c + oh * os.h + ow * os.w;
          base[0] = static_cast<scalar_t>(sums[p]);
          base[os.c] = static_cast<scalar_t>(sums[pixels + p]);
        }
        if (gmask) {
          gmask[n * ms.n + (og * taps + k) * ms.c + oh * ms.h + ow * ms.w] = static_cast<scalar_t>(sums[2 * pixels + p]);
        }
      }
    }
  });
}

// Returns (grad_input, grad_offset, grad_mask, grad_weight, grad_bias), each undefined where output_mask is
// false (grad_mask also without a mask). Layouts: see deform_memory_format.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
    const std::optional<at::Tensor>& mask, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    std::array<bool, 5> output_mask) {
  const DeformGeometry g =
      check_deform_conv2d_backward_args(grad_output, input, offset, weight, mask, stride, padding, dilation);
  const bool want_input = output_mask[0], want_offset = output_mask[1], want_mask = output_mask[2] && g.use_mask;
  const bool want_weight = output_mask[3], want_bias = output_mask[4];
  at::Tensor grad_input, grad_offset, grad_mask, grad_weight, grad_bias;
  if (want_input) grad_input = zeros_in_format(input, input.scalar_type());
  if (want_offset) {
    grad_offset = zeros_in_format(offset, offset.scalar_type());
  }
  if (want_mask) grad_mask = zeros_in_format(*mask, mask->scalar_type());
  if (want_bias) grad_bias = grad_output.sum({0, 2, 3}, false, at::toOpMathType(grad_output.scalar_type()))
                                 .to(grad_output.scalar_type());
  if (want_weight) grad_weight = at::zeros(weight.sizes(), weight.options());
  if (grad_output.numel() == 0 || !(want_input || want_offset || want_mask || want_weight)) {
    return {grad_input, grad_offset, grad_mask, grad_weight, grad_bias};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_conv2d_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::TensorOptions acc_options = input.options().dtype(acc_type<acc_t>());
    constexpr bool same = std::is_same_v<acc_t, scalar_t>;
    // grad_input is a scatter: accumulate in acc_t (the output itself when it already is acc_t).
    at::Tensor grad_input_acc;
    if (want_input) {
      grad_input_acc = same ? grad_input : zeros_in_format(input, acc_type<acc_t>());
    }
    at::Tensor partial;
    const int64_t block = channel_block(g);
    if (want_offset || want_mask) {
      partial = at::empty({g.in_channels / block, g.batch, 3, g.taps(), g.pixels()}, acc_options);
    }
    at::Tensor grad_weight_acc;
    if (want_weight) grad_weight_acc = same ? grad_weight : at::zeros(weight.sizes(), acc_options);
    // The scatter addresses grad_input with the sampled input's corner offsets: a non-dense input view (the
    // only case where the strides differ) is sampled from a dense copy in grad_input's layout.
    const at::Tensor in = !want_input || same_addressing(input, grad_input_acc)
                              ? input
                              : input.contiguous(deform_memory_format(input));
    backward_kernel<scalar_t>(grad_output, in, offset, weight, mask, g, grad_input_acc, partial, grad_weight_acc,
                              want_input || want_offset || want_mask);
    if (partial.defined()) reduce_partials<scalar_t, acc_t>(partial, g, block, grad_offset, grad_mask);
    if constexpr (!same) {
      if (want_input) grad_input.copy_(grad_input_acc);
      if (want_weight) grad_weight.copy_(grad_weight_acc);
    }
  });
  return {grad_input, grad_offset, grad_mask, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("deform_conv2d", &deform_conv2d_cpu);
  m.impl("_deform_conv2d_backward", &deform_conv2d_backward_cpu);
}

}  // namespace fastconv
