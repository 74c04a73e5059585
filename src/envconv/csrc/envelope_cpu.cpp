// Separable Gaussian envelope on channels_last CPU tensors: forward and a fused backward.
//
// Memory is [N][H][W][C] (channels_last), kernels are (k, C) so every inner loop runs over
// contiguous channels and vectorises. Zero padding; the output is read every (sh, sw) pixels.
//   forward:  y = pass_h(pass_w(x, g), g), the W-pass rows kept in a per-thread ring of k rows
//   backward: dL/dx by the transposed passes, and dL/draw from eq. (8) of the paper:
//             sum(gy * pass_h(t, g')) + sum(gt * pass_w(x, g')), with g' = dg/draw and
//             gt = pass_h^T(gy) - no k x k weight gradient is ever formed, and gt lives
//             one row at a time (the W-direction transpose needs only its own row).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <map>
#include <mutex>
#include <vector>

namespace {

// Below this many channels, stride-1 envelopes use the whole-row loops.
constexpr int64_t kRowChannels = 16;

// One W-pass row: out[ow, c] = sum_j g[j, c] * xrow[ow * sw + j - r, c].
template <typename T>
inline void pass_w_row(const T* __restrict__ xrow, const T* __restrict__ g, T* __restrict__ out, int64_t W,
                       int64_t C, int64_t k, int64_t sw, int64_t OW) {
  const int64_t r = k / 2;
  for (int64_t ow = 0; ow < OW; ++ow) {
    T* __restrict__ o = out + ow * C;
    for (int64_t c = 0; c < C; ++c) o[c] = T(0);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t w = ow * sw + j - r;
      if (w < 0 || w >= W) continue;
      const T* __restrict__ in = xrow + w * C;
      const T* __restrict__ gj = g + j * C;
      for (int64_t c = 0; c < C; ++c) o[c] += gj[c] * in[c];
    }
  }
}

// Both passes without storing the W-pass result: each thread keeps the last k W-pass rows in a
// ring (slot h % k) and computes a row only when an output row first needs it.
template <typename T>
void forward_ring(const T* x, const T* g, T* y, int64_t N, int64_t H, int64_t W, int64_t C, int64_t k, int64_t sh,
                  int64_t sw, int64_t OH, int64_t OW) {
  const int64_t r = k / 2, rowlen = OW * C;
  at::parallel_for(0, N * OH, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> ring(k * rowlen);
    std::vector<int64_t> held(k, -1);  // which (n * H + h) each slot holds
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / OH, oh = idx % OH;
      T* __restrict__ yrow = y + idx * rowlen;
      for (int64_t m = 0; m < rowlen; ++m) yrow[m] = T(0);
      for (int64_t i = 0; i < k; ++i) {
        const int64_t h = oh * sh + i - r;
        if (h < 0 || h >= H) continue;
        const int64_t slot = h % k;
        T* trow = ring.data() + slot * rowlen;
        if (held[slot] != n * H + h) {
          pass_w_row<T>(x + (n * H + h) * W * C, g, trow, W, C, k, sw, OW);
          held[slot] = n * H + h;
        }
        const T* __restrict__ gi = g + i * C;
        for (int64_t ow = 0; ow < OW; ++ow)
          for (int64_t c = 0; c < C; ++c) yrow[ow * C + c] += gi[c] * trow[ow * C + c];
      }
    }
  });
}

// ---- stride 1, few channels (the stem): loops over whole rows of W*C values, so they vectorise
// ---- however small C is. pat[j][m] = g[j][m % C] repeats each tap's channel weights along a row.
template <typename T>
std::vector<T> pattern(const T* g, int64_t k, int64_t C, int64_t len) {
  std::vector<T> pat(k * len);
  for (int64_t j = 0; j < k; ++j)
    for (int64_t m = 0; m < len; ++m) pat[j * len + m] = g[j * C + m % C];
  return pat;
}

// out[m] (+)= sum_j pat[j][m] * in[m + (j - r) * C], for m with 0 <= m + (j - r) * C < len.
template <typename T>
void shifted_sum(const T* __restrict__ in, const T* __restrict__ pat, T* __restrict__ out, int64_t k, int64_t C,
                 int64_t len, bool transpose) {
  const int64_t r = k / 2;
  for (int64_t m = 0; m < len; ++m) out[m] = T(0);
  for (int64_t j = 0; j < k; ++j) {
    const int64_t shift = (transpose ? (r - j) : (j - r)) * C;
    const int64_t lo = shift < 0 ? -shift : 0, hi = shift > 0 ? len - shift : len;
    const T* __restrict__ pj = pat + j * len;
    for (int64_t m = lo; m < hi; ++m) out[m] += pj[m] * in[m + shift];
  }
}

template <typename T>
void forward_rows(const T* x, const T* g, T* t, T* y, int64_t N, int64_t H, int64_t W, int64_t C, int64_t k) {
  const int64_t len = W * C, r = k / 2;
  const auto pat = pattern(g, k, C, len);
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row)
      shifted_sum(x + row * len, pat.data(), t + row * len, k, C, len, false);
  });
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / H, h = idx % H;
      T* __restrict__ yrow = y + idx * len;
      for (int64_t m = 0; m < len; ++m) yrow[m] = T(0);
      for (int64_t i = 0; i < k; ++i) {
        const int64_t hh = h + i - r;
        if (hh < 0 || hh >= H) continue;
        const T* __restrict__ trow = t + (n * H + hh) * len;
        const T* __restrict__ pi = pat.data() + i * len;
        for (int64_t m = 0; m < len; ++m) yrow[m] += pi[m] * trow[m];
      }
    }
  });
}

// grad_x (if px_grad) and the per-position sigma-gradient terms, summed per channel into graw.
template <typename T>
void backward_rows(const T* gy, const T* x, const T* g, const T* gd, T* t, T* gx, T* graw, int64_t N,
                   int64_t H, int64_t W, int64_t C, int64_t k) {
  const int64_t len = W * C, r = k / 2;
  const auto pat = pattern(g, k, C, len), dpat = pattern(gd, k, C, len);
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row)
      shifted_sum(x + row * len, pat.data(), t + row * len, k, C, len, false);
  });
  std::mutex lock;
  std::map<int64_t, std::vector<T>> partials;
  // One pass over the rows: gt = pass_h^T(gy) for row h (kept in a row buffer, never stored),
  // then gx = pass_w^T(gt) for the same row; acc collects both halves of eq. (8).
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(len, T(0)), z(len), gtbuf(len);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / H, h = idx % H;
      T* __restrict__ gtrow = gtbuf.data();
      T* __restrict__ zz = z.data();
      for (int64_t m = 0; m < len; ++m) gtrow[m] = zz[m] = T(0);
      for (int64_t i = 0; i < k; ++i) {
        const int64_t hy = h - i + r, ht = h + i - r;
        const T* __restrict__ pi = pat.data() + i * len;
        const T* __restrict__ di = dpat.data() + i * len;
        if (hy >= 0 && hy < H) {
          const T* __restrict__ gyrow = gy + (n * H + hy) * len;
          for (int64_t m = 0; m < len; ++m) gtrow[m] += pi[m] * gyrow[m];
        }
        if (ht >= 0 && ht < H) {
          const T* __restrict__ trow = t + (n * H + ht) * len;
          for (int64_t m = 0; m < len; ++m) zz[m] += di[m] * trow[m];
        }
      }
      const T* __restrict__ gyrow = gy + idx * len;
      T* __restrict__ a = acc.data();
      for (int64_t m = 0; m < len; ++m) a[m] += gyrow[m] * zz[m];
      if (gx != nullptr) shifted_sum<T>(gtrow, pat.data(), gx + idx * len, k, C, len, true);
      shifted_sum<T>(x + idx * len, dpat.data(), zz, k, C, len, false);
      for (int64_t m = 0; m < len; ++m) a[m] += gtrow[m] * zz[m];
    }
    std::lock_guard<std::mutex> guard(lock);
    partials[begin] = std::move(acc);
  });
  for (const auto& item : partials)
    for (int64_t m = 0; m < len; ++m) graw[m % C] += item.second[m];
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
  auto y = torch::empty({N, C, OH, OW}, opts.memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "envelope_forward", [&] {
    if (sh == 1 && sw == 1 && C < kRowChannels) {
      auto t = torch::empty({N, C, H, OW}, opts.memory_format(at::MemoryFormat::ChannelsLast));
      forward_rows<scalar_t>(x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(),
                             y.data_ptr<scalar_t>(), N, H, W, C, k);
      return;
    }
    forward_ring<scalar_t>(x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), N, H, W, C, k, sh,
                           sw, OH, OW);
  });
  return y;
}

// Returns (grad_x or an empty tensor, grad of the per-channel raw sigma (C,)).
std::tuple<torch::Tensor, torch::Tensor> envelope_backward(const torch::Tensor& gy_in, const torch::Tensor& x,
                                             const torch::Tensor& g, const torch::Tensor& gd, int64_t sh,
                                             int64_t sw, bool need_x) {
  check(x, "x");
  const auto gy = gy_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), k = g.size(0), r = k / 2;
  const int64_t OH = gy.size(2), OW = gy.size(3);
  TORCH_CHECK(OH == (H - 1) / sh + 1 && OW == (W - 1) / sw + 1, "grad_output has the wrong spatial size");
  auto opts = x.options();
  auto cl = opts.memory_format(at::MemoryFormat::ChannelsLast);
  auto gx = need_x ? torch::empty({N, C, H, W}, cl) : torch::Tensor();
  auto graw = torch::zeros({C}, opts.dtype(x.scalar_type()).memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "envelope_backward", [&] {
    using T = scalar_t;
    const T *px = x.data_ptr<T>(), *pg = g.data_ptr<T>(), *pgd = gd.data_ptr<T>(), *pgy = gy.data_ptr<T>();
    T* pgr = graw.data_ptr<T>();
    T* pgx = need_x ? gx.data_ptr<T>() : nullptr;
    if (sh == 1 && sw == 1 && C < kRowChannels) {
      auto t = torch::empty({N, C, H, OW}, cl);
      backward_rows<T>(pgy, px, pg, pgd, t.data_ptr<T>(), pgx, pgr, N, H, W, C, k);
      return;
    }
    const int64_t rowlen = OW * C;
    // per-chunk partial sums of the sigma gradient, added in chunk order: deterministic results
    std::mutex lock;
    std::map<int64_t, std::vector<T>> partials;
    // One pass over the input rows h: gt = pass_h^T(gy) for row h (a gather over the output rows
    // that read it, kept in a row buffer), the height half of eq. (8) where h is an output row,
    // then gx = pass_w^T(gt) and the width half of eq. (8) for the same row.
    at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> acc(C, T(0)), z(C), gtbuf(rowlen), ring(k * rowlen);
      std::vector<int64_t> held(k, -1);  // W-pass rows of x, recomputed into a ring as in forward_ring
      for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t n = idx / H, h = idx % H;
        T* gtrow = gtbuf.data();
        for (int64_t m = 0; m < rowlen; ++m) gtrow[m] = T(0);
        for (int64_t i = 0; i < k; ++i) {
          const int64_t num = h - i + r;
          if (num < 0 || num % sh != 0 || num / sh >= OH) continue;
          const T* gyrow = pgy + (n * OH + num / sh) * rowlen;
          const T* gi = pg + i * C;
          for (int64_t ow = 0; ow < OW; ++ow)
            for (int64_t c = 0; c < C; ++c) gtrow[ow * C + c] += gi[c] * gyrow[ow * C + c];
        }
        if (h % sh == 0 && h / sh < OH) {  // sum_ow gy[n, oh, ow] * pass_h(t, g')[n, oh, ow]
          const int64_t oh = h / sh;
          for (int64_t i = 0; i < k; ++i) {
            const int64_t hh = oh * sh + i - r;
            if (hh < 0 || hh >= H || held[hh % k] == n * H + hh) continue;
            pass_w_row<T>(px + (n * H + hh) * W * C, pg, ring.data() + (hh % k) * rowlen, W, C, k, sw, OW);
            held[hh % k] = n * H + hh;
          }
          const T* gyrow = pgy + (n * OH + oh) * rowlen;
          for (int64_t ow = 0; ow < OW; ++ow) {
            for (int64_t c = 0; c < C; ++c) z[c] = T(0);
            for (int64_t i = 0; i < k; ++i) {
              const int64_t hh = oh * sh + i - r;
              if (hh < 0 || hh >= H) continue;
              const T* trow = ring.data() + (hh % k) * rowlen + ow * C;
              const T* gdi = pgd + i * C;
              for (int64_t c = 0; c < C; ++c) z[c] += gdi[c] * trow[c];
            }
            const T* gyp = gyrow + ow * C;
            for (int64_t c = 0; c < C; ++c) acc[c] += gyp[c] * z[c];
          }
        }
        const T* xrow = px + idx * W * C;
        if (need_x) {
          T* gxrow = pgx + idx * W * C;
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
        for (int64_t ow = 0; ow < OW; ++ow) {  // sum_ow gt * pass_w(x, g')
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
      partials[begin] = std::move(acc);
    });
    for (const auto& item : partials)
      for (int64_t c = 0; c < C; ++c) pgr[c] += item.second[c];
  });
  return std::make_tuple(need_x ? gx : torch::empty({0}, opts), graw);
}

// Registered as internal ops of the envconv namespace (a fragment: the public envconv ops are
// defined in Python by envconv.ops.library, which calls these on CPU tensors).
TORCH_LIBRARY_FRAGMENT(envconv, m) {
  m.def("_cpu_envelope_forward(Tensor x, Tensor g, int sh, int sw) -> Tensor");
  m.def("_cpu_envelope_backward(Tensor gy, Tensor x, Tensor g, Tensor gd, int sh, int sw, bool need_x) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(envconv, CPU, m) {
  m.impl("_cpu_envelope_forward", &envelope_forward);
  m.impl("_cpu_envelope_backward", &envelope_backward);
}
