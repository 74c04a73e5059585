// Separable Gaussian envelope on channels_last CPU tensors: forward and a fused backward.
//
// Memory is [N][H][W][C] (channels_last), kernels are (k, C) so every inner loop runs over
// contiguous channels and vectorises. Zero padding; the output is read every (sh, sw) pixels.
//   forward:  t = pass_w(x, g), y = pass_h(t, g)
//   backward: dL/dx by the transposed passes, and dL/draw from eq. (8) of the paper:
//             sum(gy * pass_h(t, g')) + sum(gt * pass_w(x, g')), with g' = dg/draw and
//             gt = pass_h^T(gy) - no k x k weight gradient is ever formed.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <map>
#include <mutex>
#include <vector>

namespace {

template <typename T>
void pass_w(const T* __restrict__ x, const T* __restrict__ g, T* __restrict__ t, int64_t NH, int64_t W, int64_t C, int64_t k, int64_t sw, int64_t OW) {
  const int64_t r = k / 2;
  at::parallel_for(0, NH, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const T* xrow = x + row * W * C;
      T* trow = t + row * OW * C;
      for (int64_t ow = 0; ow < OW; ++ow) {
        T* __restrict__ out = trow + ow * C;
        for (int64_t c = 0; c < C; ++c) out[c] = T(0);
        for (int64_t j = 0; j < k; ++j) {
          const int64_t w = ow * sw + j - r;
          if (w < 0 || w >= W) continue;
          const T* __restrict__ in = xrow + w * C;
          const T* __restrict__ gj = g + j * C;
          for (int64_t c = 0; c < C; ++c) out[c] += gj[c] * in[c];
        }
      }
    }
  });
}

template <typename T>
void pass_h(const T* __restrict__ t, const T* __restrict__ g, T* __restrict__ y, int64_t N, int64_t H, int64_t OW, int64_t C, int64_t k, int64_t sh,
            int64_t OH) {
  const int64_t r = k / 2, rowlen = OW * C;
  at::parallel_for(0, N * OH, 1, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / OH, oh = idx % OH;
      T* yrow = y + idx * rowlen;
      for (int64_t m = 0; m < rowlen; ++m) yrow[m] = T(0);
      for (int64_t i = 0; i < k; ++i) {
        const int64_t h = oh * sh + i - r;
        if (h < 0 || h >= H) continue;
        const T* trow = t + (n * H + h) * rowlen;
        const T* gi = g + i * C;
        for (int64_t ow = 0; ow < OW; ++ow)
          for (int64_t c = 0; c < C; ++c) yrow[ow * C + c] += gi[c] * trow[ow * C + c];
      }
    }
  });
}

// 4-D sizes of a channels_last tensor, checked.
void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast), name,
              " must be a 4-D channels_last tensor");
}

}  // namespace

torch::Tensor envelope_forward(const torch::Tensor& x, const torch::Tensor& g, int64_t sh, int64_t sw) {
  check(x, "x");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), k = g.size(0);
  TORCH_CHECK(g.dim() == 2 && g.size(1) == C && g.is_contiguous() && g.scalar_type() == x.scalar_type(),
              "g must be a contiguous (k, C) tensor of x's dtype");
  const int64_t OH = (H - 1) / sh + 1, OW = (W - 1) / sw + 1;
  auto opts = x.options();
  auto t = torch::empty({N, C, H, OW}, opts.memory_format(at::MemoryFormat::ChannelsLast));
  auto y = torch::empty({N, C, OH, OW}, opts.memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "envelope_forward", [&] {
    pass_w<scalar_t>(x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), N * H, W, C, k, sw, OW);
    pass_h<scalar_t>(t.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), N, H, OW, C, k, sh, OH);
  });
  return y;
}

// Returns (grad_x or an empty tensor, grad of the per-channel raw sigma (C,)).
std::vector<torch::Tensor> envelope_backward(const torch::Tensor& gy_in, const torch::Tensor& x,
                                             const torch::Tensor& g, const torch::Tensor& gd, int64_t sh,
                                             int64_t sw, bool need_x) {
  check(x, "x");
  const auto gy = gy_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), k = g.size(0), r = k / 2;
  const int64_t OH = gy.size(2), OW = gy.size(3);
  TORCH_CHECK(OH == (H - 1) / sh + 1 && OW == (W - 1) / sw + 1, "grad_output has the wrong spatial size");
  auto opts = x.options();
  auto cl = opts.memory_format(at::MemoryFormat::ChannelsLast);
  auto t = torch::empty({N, C, H, OW}, cl);
  auto gt = torch::empty({N, C, H, OW}, cl);
  auto gx = need_x ? torch::empty({N, C, H, W}, cl) : torch::Tensor();
  auto graw = torch::zeros({C}, opts.dtype(x.scalar_type()).memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "envelope_backward", [&] {
    using T = scalar_t;
    const T *px = x.data_ptr<T>(), *pg = g.data_ptr<T>(), *pgd = gd.data_ptr<T>(), *pgy = gy.data_ptr<T>();
    T *pt = t.data_ptr<T>(), *pgt = gt.data_ptr<T>(), *pgr = graw.data_ptr<T>();
    T* pgx = need_x ? gx.data_ptr<T>() : nullptr;
    const int64_t rowlen = OW * C;
    // per-chunk partial sums of the sigma gradient, added in chunk order: deterministic results
    std::mutex lock;
    std::map<std::pair<int, int64_t>, std::vector<T>> partials;
    pass_w<T>(px, pg, pt, N * H, W, C, k, sw, OW);
    // gt = pass_h^T(gy) (a gather over the output rows that read row h), and the height half of eq. (8).
    at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> acc(C, T(0)), z(C);
      for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t n = idx / H, h = idx % H;
        T* gtrow = pgt + idx * rowlen;
        for (int64_t m = 0; m < rowlen; ++m) gtrow[m] = T(0);
        for (int64_t i = 0; i < k; ++i) {
          const int64_t num = h - i + r;
          if (num < 0 || num % sh != 0 || num / sh >= OH) continue;
          const T* gyrow = pgy + (n * OH + num / sh) * rowlen;
          const T* gi = pg + i * C;
          for (int64_t ow = 0; ow < OW; ++ow)
            for (int64_t c = 0; c < C; ++c) gtrow[ow * C + c] += gi[c] * gyrow[ow * C + c];
        }
        // rows h that are output rows: sum_ow gy[n, oh, ow] * pass_h(t, g')[n, oh, ow]
        if (h % sh == 0 && h / sh < OH) {
          const int64_t oh = h / sh;
          const T* gyrow = pgy + (n * OH + oh) * rowlen;
          for (int64_t ow = 0; ow < OW; ++ow) {
            for (int64_t c = 0; c < C; ++c) z[c] = T(0);
            for (int64_t i = 0; i < k; ++i) {
              const int64_t hh = oh * sh + i - r;
              if (hh < 0 || hh >= H) continue;
              const T* trow = pt + (n * H + hh) * rowlen + ow * C;
              const T* gdi = pgd + i * C;
              for (int64_t c = 0; c < C; ++c) z[c] += gdi[c] * trow[c];
            }
            const T* gyp = gyrow + ow * C;
            for (int64_t c = 0; c < C; ++c) acc[c] += gyp[c] * z[c];
          }
        }
      }
      std::lock_guard<std::mutex> guard(lock);
      partials[{0, begin}] = std::move(acc);
    });
    // gx = pass_w^T(gt), and the width half of eq. (8): sum gt * pass_w(x, g').
    at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> acc(C, T(0)), z(C);
      for (int64_t row = begin; row < end; ++row) {
        const T* xrow = px + row * W * C;
        const T* gtrow = pgt + row * rowlen;
        if (need_x) {
          T* gxrow = pgx + row * W * C;
          for (int64_t m = 0; m < W * C; ++m) gxrow[m] = T(0);
          for (int64_t w = 0; w < W; ++w) {
            T* out = gxrow + w * C;
            for (int64_t j = 0; j < k; ++j) {
              const int64_t num = w - j + r;
              if (num < 0 || num % sw != 0 || num / sw >= OW) continue;
              const T* in = gtrow + (num / sw) * C;
              const T* gj = pg + j * C;
              for (int64_t c = 0; c < C; ++c) out[c] += gj[c] * in[c];
            }
          }
        }
        for (int64_t ow = 0; ow < OW; ++ow) {
          for (int64_t c = 0; c < C; ++c) z[c] = T(0);
          for (int64_t j = 0; j < k; ++j) {
            const int64_t w = ow * sw + j - r;
            if (w < 0 || w >= W) continue;
            const T* in = xrow + w * C;
            const T* gdj = pgd + j * C;
            for (int64_t c = 0; c < C; ++c) z[c] += gdj[c] * in[c];
          }
          const T* gtp = gtrow + ow * C;
          for (int64_t c = 0; c < C; ++c) acc[c] += gtp[c] * z[c];
        }
      }
      std::lock_guard<std::mutex> guard(lock);
      partials[{1, begin}] = std::move(acc);
    });
    for (const auto& item : partials)
      for (int64_t c = 0; c < C; ++c) pgr[c] += item.second[c];
  });
  return {need_x ? gx : torch::empty({0}, opts), graw};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &envelope_forward, "separable envelope, channels_last CPU");
  m.def("backward", &envelope_backward, "fused backward: grad_x and the eq. (8) sigma gradient");
}
