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

#include <algorithm>
#include <map>
#include <mutex>
#include <vector>

namespace {

// Rows of fewer values than this (the pass-per-axis kernel's M) are filtered a block at a time.
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

// 4-D sizes of a channels_last tensor, checked.
void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast), name,
              " must be a 4-D channels_last tensor");
}

// ---- N-D: one 1-D pass per spatial axis, for 1-3 spatial dims, channels_last or contiguous ----------
//
// A pass along one spatial axis sees its tensor as B blocks of [L][M] in memory: L the axis, M the
// elements after it in memory (later spatial axes, and the channels when they are innermost). A
// channel is m % C in channels_last memory, and one per block ((b / before) % C) in contiguous
// memory. Rows of M values are filtered with per-tap weight rows of period C, so the inner loops run
// over contiguous memory and vectorise in both layouts; rows shorter than kRowChannels (the last
// axis of contiguous or few-channel maps) are filtered a whole block at a time instead.
struct AxisView {
  int64_t B, L, OL, M, C, before, k, s;
  bool cl;  // channels innermost
  int64_t channel(int64_t b) const { return cl ? 0 : (b / before) % C; }
};

// The view of a pass along spatial axis `a` of t (sizes of t; outputs strided by s).
AxisView axis_view(const torch::Tensor& t, int64_t a, int64_t k, int64_t s, bool cl) {
  const int64_t N = t.size(0), C = t.size(1), dims = t.dim() - 2;
  int64_t before = 1, after = 1;
  for (int64_t i = 0; i < a; ++i) before *= t.size(2 + i);
  for (int64_t i = a + 1; i < dims; ++i) after *= t.size(2 + i);
  const int64_t L = t.size(2 + a);
  AxisView v{N * before * (cl ? 1 : C), L, (L - 1) / s + 1, after * (cl ? C : 1), C, before, k, s, cl};
  return v;
}

// Weight rows of one block: w[i * P + j] = g[i, channel of element j], P a multiple of the period.
template <typename T>
struct TapRows {
  std::vector<T> w;
  int64_t P = 0, held = -1;
  void fill(const T* g, const AxisView& v, int64_t c) {  // c: the block's channel (contiguous memory)
    if (v.cl) {
      if (held == 0) return;
      P = std::min<int64_t>(v.M, v.C * std::max<int64_t>(1, 512 / v.C));
      w.resize(v.k * P);
      for (int64_t i = 0; i < v.k; ++i)
        for (int64_t j = 0; j < P; ++j) w[i * P + j] = g[i * v.C + j % v.C];
      held = 0;
      return;
    }
    if (held == c + 1) return;
    P = std::min<int64_t>(v.M, 512);
    w.resize(v.k * P);
    for (int64_t i = 0; i < v.k; ++i)
      for (int64_t j = 0; j < P; ++j) w[i * P + j] = g[i * v.C + c];
    held = c + 1;
  }
  const T* tap(int64_t i) const { return w.data() + i * P; }
};

// out[m] += w[m % P] * in[m] for m < M (M a multiple of P's period).
template <typename T>
inline void axpy_rows(T* __restrict__ out, const T* __restrict__ in, const T* __restrict__ w, int64_t M, int64_t P) {
  for (int64_t m0 = 0; m0 < M; m0 += P) {
    const int64_t n = std::min(P, M - m0);
    for (int64_t j = 0; j < n; ++j) out[m0 + j] += w[j] * in[m0 + j];
  }
}

// acc[m % P] += w[m % P] * a[m] * b[m] for m < M.
template <typename T>
inline void dot_rows(T* __restrict__ acc, const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ w,
                     int64_t M, int64_t P) {
  for (int64_t m0 = 0; m0 < M; m0 += P) {
    const int64_t n = std::min(P, M - m0);
    for (int64_t j = 0; j < n; ++j) acc[j] += w[j] * a[m0 + j] * b[m0 + j];
  }
}

// Per-thread partial sums of the sigma gradient (C,), added in chunk order: deterministic results.
template <typename T>
struct Partials {
  std::mutex lock;
  std::map<int64_t, std::vector<T>> parts;
  void add(int64_t begin, std::vector<T>&& part) {
    std::lock_guard<std::mutex> guard(lock);
    parts[begin] = std::move(part);
  }
  void sum_into(T* graw, int64_t stride) const {  // graw[c * stride] += sum of the parts
    for (const auto& item : parts)
      for (size_t c = 0; c < item.second.size(); ++c) graw[c * stride] += item.second[c];
  }
};

// Folds a per-position accumulator of period C (length P) or a per-channel one into acc (C,).
template <typename T>
inline void fold(std::vector<T>& acc, const std::vector<T>& pos, int64_t C) {
  for (size_t j = 0; j < pos.size(); ++j) acc[j % C] += pos[j];
}

// ---- short rows (M < kRowChannels): a block [L][M] at a time, tap by tap over the outputs whose tap
// ---- reads inside the block, so no loop checks bounds; with stride 1 (ol, m) runs as one flat loop.
template <typename T>
struct ShortTaps {
  std::vector<T> pat;  // channels_last: pat[i * len + p] = g[i, p % C] over a block's len = L * M values
  const T* g;
  int64_t len = 0, C;
  ShortTaps(const T* g_, const AxisView& v) : g(g_), C(v.C) {
    if (!v.cl) return;  // contiguous memory: one weight per tap and block, read from g
    len = std::max(v.L, v.OL) * v.M;
    pat.resize(v.k * len);
    for (int64_t i = 0; i < v.k; ++i)
      for (int64_t p = 0; p < len; ++p) pat[i * len + p] = g[i * C + p % C];
  }
};

// The outputs [lo, hi) whose tap i reads inside an axis of length L.
inline void tap_range(int64_t i, const AxisView& v, int64_t& lo, int64_t& hi) {
  const int64_t r = v.k / 2, first = r - i, last = v.L - 1 - i + r;
  lo = first > 0 ? (first + v.s - 1) / v.s : 0;
  hi = last >= 0 ? std::min(v.OL, last / v.s + 1) : 0;
}

// out = the pass of one block (or, transpose, its adjoint: out of L rows from in of OL rows).
template <typename T>
void block_pass(const T* __restrict__ in, T* __restrict__ out, const ShortTaps<T>& taps, const AxisView& v,
                int64_t c, bool transpose) {
  const int64_t M = v.M, r = v.k / 2, s = v.s;
  std::fill(out, out + (transpose ? v.L : v.OL) * M, T(0));
  for (int64_t i = 0; i < v.k; ++i) {
    int64_t lo, hi;
    tap_range(i, v, lo, hi);
    if (lo >= hi) continue;
    const int64_t shift = (i - r) * M;  // input row ol * s + i - r
    const T* w = v.cl ? taps.pat.data() + i * taps.len : nullptr;
    const T gi = v.cl ? T(0) : taps.g[i * taps.C + c];
    if (s == 1) {  // one flat run over p = ol * M + m
      const int64_t p0 = lo * M, p1 = hi * M;
      if (transpose) {
        if (w) for (int64_t p = p0; p < p1; ++p) out[p + shift] += w[p] * in[p];
        else for (int64_t p = p0; p < p1; ++p) out[p + shift] += gi * in[p];
      } else {
        if (w) for (int64_t p = p0; p < p1; ++p) out[p] += w[p] * in[p + shift];
        else for (int64_t p = p0; p < p1; ++p) out[p] += gi * in[p + shift];
      }
      continue;
    }
    if (M == 1 && !w) {  // a contiguous row: one weight, a strided run
      const int64_t first = lo * s + i - r;
      if (transpose) for (int64_t ol = lo; ol < hi; ++ol) out[first + (ol - lo) * s] += gi * in[ol];
      else for (int64_t ol = lo; ol < hi; ++ol) out[ol] += gi * in[first + (ol - lo) * s];
      continue;
    }
    for (int64_t ol = lo; ol < hi; ++ol) {
      const int64_t at = (ol * s + i - r) * M;
      for (int64_t m = 0; m < M; ++m) {
        const T weight = w ? w[m] : gi;
        if (transpose) out[at + m] += weight * in[ol * M + m];
        else out[ol * M + m] += weight * in[at + m];
      }
    }
  }
}

template <typename T>
inline void block_forward(const T* in, T* out, const ShortTaps<T>& taps, const AxisView& v, int64_t c) {
  block_pass(in, out, taps, v, c, false);
}

template <typename T>
inline void block_transpose(const T* in, T* out, const ShortTaps<T>& taps, const AxisView& v, int64_t c) {
  block_pass(in, out, taps, v, c, true);
}

// ---- contiguous rows at stride 1 (M == 1): the blocks of one channel lie end to end, so a run of them is
// ---- filtered as one long row (long vector loops), then the r outputs at each block's two ends, whose
// ---- taps crossed into the neighbouring block, are recomputed exactly.
inline bool is_row_run(const AxisView& v) { return !v.cl && v.M == 1 && v.s == 1; }

// out[p] = sum_i w[i] * in[p + i - r] within each of n blocks of length L (zero outside a block).
template <typename T>
void run_correlate(const T* __restrict__ in, T* __restrict__ out, const T* w, int64_t n, int64_t L, int64_t k) {
  const int64_t r = k / 2, len = n * L;
  std::fill(out, out + len, T(0));
  for (int64_t i = 0; i < k; ++i) {
    const int64_t shift = i - r, lo = std::max<int64_t>(0, -shift), hi = std::min(len, len - shift);
    const T wi = w[i];
    for (int64_t p = lo; p < hi; ++p) out[p] += wi * in[p + shift];
  }
  const int64_t edge = std::min(r, L);
  for (int64_t j = 0; j < n; ++j) {
    const T* bin = in + j * L;
    T* bout = out + j * L;
    auto exact = [&](int64_t q) {
      T sum = T(0);
      for (int64_t i = 0; i < k; ++i) {
        const int64_t l = q + i - r;
        if (l >= 0 && l < L) sum += w[i] * bin[l];
      }
      bout[q] = sum;
    };
    for (int64_t q = 0; q < edge; ++q) exact(q);
    for (int64_t q = std::max(edge, L - r); q < L; ++q) exact(q);
  }
}

// sum_p a[p] * b[p] with independent partial sums (so the loop vectorises).
template <typename T>
T run_dot(const T* __restrict__ a, const T* __restrict__ b, int64_t len) {
  constexpr int64_t kLanes = 16;
  T part[kLanes] = {};
  int64_t p = 0;
  for (; p + kLanes <= len; p += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) part[j] += a[p + j] * b[p + j];
  T sum = T(0);
  for (; p < len; ++p) sum += a[p] * b[p];
  for (int64_t j = 0; j < kLanes; ++j) sum += part[j];
  return sum;
}

// Calls fn(first block, number of blocks, channel) for the runs of one channel within blocks [begin, end).
template <typename Fn>
void for_runs(const AxisView& v, int64_t begin, int64_t end, Fn fn) {
  for (int64_t b = begin; b < end;) {
    const int64_t stop = std::min(end, (b / v.before + 1) * v.before);
    fn(b, stop - b, v.channel(b));
    b = stop;
  }
}

template <typename T>
void axis_forward(const T* x, const T* g, T* y, const AxisView& v) {
  const int64_t r = v.k / 2, M = v.M;
  if (is_row_run(v)) {
    at::parallel_for(0, v.B, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> w(v.k);
      for_runs(v, begin, end, [&](int64_t b, int64_t n, int64_t c) {
        for (int64_t i = 0; i < v.k; ++i) w[i] = g[i * v.C + c];
        run_correlate(x + b * v.L, y + b * v.L, w.data(), n, v.L, v.k);
      });
    });
    return;
  }
  if (M < kRowChannels) {  // short rows: a block at a time
    const ShortTaps<T> taps(g, v);
    at::parallel_for(0, v.B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) block_forward(x + b * v.L * M, y + b * v.OL * M, taps, v, v.channel(b));
    });
    return;
  }
  at::parallel_for(0, v.B * v.OL, 1, [&](int64_t begin, int64_t end) {
    TapRows<T> taps;
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t b = idx / v.OL, ol = idx % v.OL;
      taps.fill(g, v, v.channel(b));
      T* __restrict__ yrow = y + idx * M;
      for (int64_t m = 0; m < M; ++m) yrow[m] = T(0);
      for (int64_t i = 0; i < v.k; ++i) {
        const int64_t l = ol * v.s + i - r;
        if (l >= 0 && l < v.L) axpy_rows(yrow, x + (b * v.L + l) * M, taps.tap(i), M, taps.P);
      }
    }
  });
}

// gx = the pass's transpose applied to gy (if gx), and graw[c * gstride] += sum gy * pass(x, gd).
template <typename T>
void axis_backward(const T* gy, const T* x, const T* g, const T* gd, T* gx, T* graw, int64_t gstride,
                   const AxisView& v) {
  const int64_t r = v.k / 2, M = v.M, C = v.C;
  Partials<T> partials;
  if (is_row_run(v)) {  // the transpose of a stride-1 correlation is the correlation with the taps reversed
    at::parallel_for(0, v.B, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> acc(C, T(0)), w(v.k), wd(v.k), z;
      for_runs(v, begin, end, [&](int64_t b, int64_t n, int64_t c) {
        for (int64_t i = 0; i < v.k; ++i) w[i] = g[(v.k - 1 - i) * C + c], wd[i] = gd[i * C + c];
        if (gx != nullptr) run_correlate(gy + b * v.L, gx + b * v.L, w.data(), n, v.L, v.k);
        z.resize(n * v.L);
        run_correlate(x + b * v.L, z.data(), wd.data(), n, v.L, v.k);
        acc[c] += run_dot(gy + b * v.L, z.data(), n * v.L);
      });
      partials.add(begin, std::move(acc));
    });
    partials.sum_into(graw, gstride);
    return;
  }
  if (M < kRowChannels) {  // short rows: a block at a time
    const ShortTaps<T> taps(g, v), dtaps(gd, v);
    at::parallel_for(0, v.B, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> acc(C, T(0)), z(v.OL * M), pos(M);
      for (int64_t b = begin; b < end; ++b) {
        const T *xb = x + b * v.L * M, *gb = gy + b * v.OL * M;
        const int64_t c0 = v.channel(b);
        if (gx != nullptr) block_transpose(gb, gx + b * v.L * M, taps, v, c0);
        block_forward(xb, z.data(), dtaps, v, c0);  // the pass with g': eq. (8) is sum gy * z
        std::fill(pos.begin(), pos.end(), T(0));
        for (int64_t ol = 0; ol < v.OL; ++ol)
          for (int64_t m = 0; m < M; ++m) pos[m] += gb[ol * M + m] * z[ol * M + m];
        for (int64_t m = 0; m < M; ++m) acc[v.cl ? m % C : c0] += pos[m];
      }
      partials.add(begin, std::move(acc));
    });
    partials.sum_into(graw, gstride);
    return;
  }
  if (gx != nullptr) {
    at::parallel_for(0, v.B * v.L, 1, [&](int64_t begin, int64_t end) {
      TapRows<T> taps;
      for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t b = idx / v.L, l = idx % v.L;
        taps.fill(g, v, v.channel(b));
        T* __restrict__ row = gx + idx * M;
        for (int64_t m = 0; m < M; ++m) row[m] = T(0);
        for (int64_t i = 0; i < v.k; ++i) {
          const int64_t num = l - i + r;
          if (num >= 0 && num % v.s == 0 && num / v.s < v.OL)
            axpy_rows(row, gy + (b * v.OL + num / v.s) * M, taps.tap(i), M, taps.P);
        }
      }
    });
  }
  at::parallel_for(0, v.B * v.OL, 1, [&](int64_t begin, int64_t end) {
    TapRows<T> taps;
    std::vector<T> pos, acc(C, T(0));
    int64_t pos_channel = -1;  // contiguous memory: pos holds this channel's sum
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t b = idx / v.OL, ol = idx % v.OL, c = v.channel(b);
      taps.fill(gd, v, c);
      if (pos.empty()) pos.assign(taps.P, T(0));
      if (!v.cl && c != pos_channel) {  // a new channel: fold the last one's sum
        if (pos_channel >= 0) for (T p : pos) acc[pos_channel] += p;
        std::fill(pos.begin(), pos.end(), T(0));
        pos_channel = c;
      }
      const T* gyrow = gy + idx * M;
      for (int64_t i = 0; i < v.k; ++i) {
        const int64_t l = ol * v.s + i - r;
        if (l >= 0 && l < v.L) dot_rows(pos.data(), gyrow, x + (b * v.L + l) * M, taps.tap(i), M, taps.P);
      }
    }
    if (v.cl) fold(acc, pos, C);
    else if (pos_channel >= 0) for (T p : pos) acc[pos_channel] += p;
    partials.add(begin, std::move(acc));
  });
  partials.sum_into(graw, gstride);
}

// A tensor of t's sizes with spatial axis a of length n, in t's memory format.
torch::Tensor empty_with_axis(const torch::Tensor& t, int64_t a, int64_t n, bool cl) {
  auto sizes = t.sizes().vec();
  sizes[2 + a] = n;
  auto format = !cl ? at::MemoryFormat::Contiguous
                    : (t.dim() == 5 ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::ChannelsLast);
  return torch::empty(sizes, t.options().memory_format(format));
}

bool check_nd(const torch::Tensor& x, const torch::Tensor& g, at::IntArrayRef stride, at::IntArrayRef sizes,
              const char* name) {
  TORCH_CHECK(x.device().is_cpu(), name, ": x must be on the CPU");
  TORCH_CHECK(x.dim() >= 3 && x.dim() <= 5, name, ": x must have 1-3 spatial dims");
  const int64_t dims = x.dim() - 2;
  TORCH_CHECK(g.dim() == 3 && g.size(0) == dims && g.size(2) == x.size(1) && g.is_contiguous() &&
                  g.scalar_type() == x.scalar_type(),
              name, ": g must be a contiguous (dims, k, C) tensor of x's dtype");
  TORCH_CHECK(static_cast<int64_t>(stride.size()) == dims, name, ": one stride per spatial axis");
  TORCH_CHECK(static_cast<int64_t>(sizes.size()) == dims, name, ": one size per spatial axis");
  for (const auto k : sizes)
    TORCH_CHECK(k >= 1 && k % 2 == 1 && k <= g.size(1), name, ": sizes must be odd, at most g's ", g.size(1));
  const bool cl = x.dim() > 3 && !x.is_contiguous() &&
                  x.is_contiguous(x.dim() == 5 ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(cl || x.is_contiguous(), name, ": x must be contiguous or channels_last");
  return cl;
}

// Axis a's taps: the central sizes[a] rows of g[a] (k, C) - a shorter axis runs only its own taps.
template <typename T>
const T* axis_taps(const torch::Tensor& g, int64_t a, int64_t size) {
  return g[a].data_ptr<T>() + (g.size(1) - size) / 2 * g.size(2);
}

// The passes, last spatial axis first: ts[j] is the input of pass j (ts[0] = x), the result last.
std::vector<torch::Tensor> nd_passes(const torch::Tensor& x, const torch::Tensor& g, at::IntArrayRef stride,
                                     at::IntArrayRef sizes, bool cl, int64_t count) {
  const int64_t dims = x.dim() - 2;
  std::vector<torch::Tensor> ts{x};
  for (int64_t j = 0; j < count; ++j) {
    const int64_t a = dims - 1 - j;
    const auto& t = ts.back();
    const auto v = axis_view(t, a, sizes[a], stride[a], cl);
    auto y = empty_with_axis(t, a, v.OL, cl);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "envelope_nd_forward", [&] {
      axis_forward<scalar_t>(t.data_ptr<scalar_t>(), axis_taps<scalar_t>(g, a, sizes[a]), y.data_ptr<scalar_t>(), v);
    });
    ts.push_back(y);
  }
  return ts;
}

}  // namespace

// The envelope of x (N, C, *spatial) with the 1-D kernels g[a] (k, C) of each spatial axis (of sizes[a] taps).
torch::Tensor envelope_nd_forward(const torch::Tensor& x, const torch::Tensor& g, at::IntArrayRef stride,
                                  at::IntArrayRef sizes) {
  const bool cl = check_nd(x, g, stride, sizes, "_cpu_envelope_nd_forward");
  return nd_passes(x, g, stride, sizes, cl, x.dim() - 2).back();
}

// (grad_x or an empty tensor, grad of the raw sigma per channel and axis (C, dims)).
std::tuple<torch::Tensor, torch::Tensor> envelope_nd_backward(const torch::Tensor& gy_in, const torch::Tensor& x,
                                                              const torch::Tensor& g, const torch::Tensor& gd,
                                                              at::IntArrayRef stride, at::IntArrayRef sizes,
                                                              bool need_x) {
  const bool cl = check_nd(x, g, stride, sizes, "_cpu_envelope_nd_backward");
  TORCH_CHECK(gd.sizes() == g.sizes() && gd.is_contiguous() && gd.scalar_type() == x.scalar_type(),
              "_cpu_envelope_nd_backward: gd must be like g");
  const int64_t dims = x.dim() - 2, C = x.size(1);
  auto ts = nd_passes(x, g, stride, sizes, cl, dims - 1);  // the inputs of every pass
  auto out_sizes = ts.back().sizes().vec();
  out_sizes[2] = (x.size(2) - 1) / stride[0] + 1;
  TORCH_CHECK(gy_in.sizes() == at::IntArrayRef(out_sizes), "_cpu_envelope_nd_backward: grad_output has the wrong size");
  auto grad = cl ? gy_in.contiguous(x.dim() == 5 ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::ChannelsLast)
                 : gy_in.contiguous();
  auto graw = torch::zeros({C, dims}, x.options().memory_format(at::MemoryFormat::Contiguous));
  for (int64_t j = dims - 1; j >= 0; --j) {  // the last pass first
    const int64_t a = dims - 1 - j;
    const auto& t = ts[j];
    const auto v = axis_view(t, a, sizes[a], stride[a], cl);
    const bool want_input = j > 0 || need_x;
    auto gx = want_input ? empty_with_axis(t, a, v.L, cl) : torch::Tensor();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "envelope_nd_backward", [&] {
      axis_backward<scalar_t>(grad.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), axis_taps<scalar_t>(g, a, sizes[a]),
                              axis_taps<scalar_t>(gd, a, sizes[a]), want_input ? gx.data_ptr<scalar_t>() : nullptr,
                              graw.data_ptr<scalar_t>() + a, dims, v);
    });
    grad = gx;
  }
  return std::make_tuple(need_x ? grad : torch::empty({0}, x.options()), graw);
}

torch::Tensor envelope_forward(const torch::Tensor& x, const torch::Tensor& g, int64_t sh, int64_t sw) {
  check(x, "x");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), k = g.size(0);
  TORCH_CHECK(g.dim() == 2 && g.size(1) == C && g.is_contiguous() && g.scalar_type() == x.scalar_type(),
              "g must be a contiguous (k, C) tensor of x's dtype");
  const int64_t OH = (H - 1) / sh + 1, OW = (W - 1) / sw + 1;
  auto opts = x.options();
  auto y = torch::empty({N, C, OH, OW}, opts.memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "envelope_forward", [&] {
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
  const int64_t OH = (H - 1) / sh + 1, OW = (W - 1) / sw + 1;
  TORCH_CHECK(gy.dim() == 4 && gy.size(0) == N && gy.size(1) == C && gy.size(2) == OH && gy.size(3) == OW &&
                  gy.scalar_type() == x.scalar_type(),
              "_cpu_envelope_backward: grad_output must be (N, C, OH, OW) of x's dtype");
  TORCH_CHECK(g.dim() == 2 && g.size(1) == C && g.is_contiguous() && g.scalar_type() == x.scalar_type() &&
                  gd.sizes() == g.sizes() && gd.is_contiguous() && gd.scalar_type() == x.scalar_type(),
              "_cpu_envelope_backward: g and gd must be contiguous (k, C) tensors of x's dtype");
  auto opts = x.options();
  auto cl = opts.memory_format(at::MemoryFormat::ChannelsLast);
  auto gx = need_x ? torch::empty({N, C, H, W}, cl) : torch::Tensor();
  auto graw = torch::zeros({C}, opts.dtype(x.scalar_type()).memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "envelope_backward", [&] {
    using T = scalar_t;
    const T *px = x.data_ptr<T>(), *pg = g.data_ptr<T>(), *pgd = gd.data_ptr<T>(), *pgy = gy.data_ptr<T>();
    T* pgr = graw.data_ptr<T>();
    T* pgx = need_x ? gx.data_ptr<T>() : nullptr;
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
  m.def("_cpu_envelope_nd_forward(Tensor x, Tensor g, int[] stride, int[] sizes) -> Tensor");
  m.def("_cpu_envelope_nd_backward(Tensor gy, Tensor x, Tensor g, Tensor gd, int[] stride, int[] sizes, bool need_x) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(envconv, CPU, m) {
  m.impl("_cpu_envelope_forward", &envelope_forward);
  m.impl("_cpu_envelope_backward", &envelope_backward);
  m.impl("_cpu_envelope_nd_forward", &envelope_nd_forward);
  m.impl("_cpu_envelope_nd_backward", &envelope_nd_backward);
}
