// The host backend's attention kernels: plain loops, f32 accumulation. They
// are the reference the CUDA kernels are tested against, and what every CPU
// test runs.
#include "cobatch/gpu/detail/host_simd.hpp"
#include "cobatch/gpu/error.hpp"
#include "cobatch/gpu/float16.hpp"
#include "cobatch/gpu/kernels/attention_kernels.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

#if defined(__SSE__)
#include <xmmintrin.h>  // _mm_stream_ps, _mm_sfence
#endif

namespace cobatch::gpu::kernels::host {
namespace {

using detail::exp_nonpositive;
using detail::f32x4;
using detail::finite4;
using detail::i32x4;
using detail::load4;
using detail::pow2;
using detail::select;
using detail::store4;

constexpr float neg_inf = -std::numeric_limits<float>::infinity();

COBATCH_ALWAYS_INLINE float load(const float* p, std::size_t i) noexcept { return p[i]; }
COBATCH_ALWAYS_INLINE float load(const bf16* p, std::size_t i) noexcept { return p[i].to_float(); }
COBATCH_ALWAYS_INLINE float load(const f16* p, std::size_t i) noexcept { return p[i].to_float(); }

inline void put(float* p, std::size_t i, float x) noexcept { p[i] = x; }
inline void put(bf16* p, std::size_t i, float x) noexcept { p[i] = bf16::from_float(x); }
inline void put(f16* p, std::size_t i, float x) noexcept { p[i] = f16::from_float(x); }

// Calls fn with a value of the element type of `type` (f32, bf16 or f16): the
// one place a data_type becomes a C++ type.
template <class Fn>
COBATCH_ALWAYS_INLINE void with_element_type(data_type type, const char* what, Fn&& fn) {
  switch (type) {
    case data_type::f32: fn(float{}); return;
    case data_type::bf16: fn(bf16{}); return;
    case data_type::f16: fn(f16{}); return;
    default: break;
  }
  throw std::system_error(make_error_code(errc::invalid_argument),
                          std::string("cobatch: ") + what + " over " + name_of(type) + ", not f32, bf16 or f16");
}

// Writes `n` floats as `type`.
void store_row(void* dst, std::size_t offset, const float* src, std::size_t n, data_type type) {
  with_element_type(type, "attention output", [&](auto tag) {
    auto* out = static_cast<decltype(tag)*>(dst) + offset;
    for (std::size_t i = 0; i < n; ++i) put(out, i, src[i]);
  });
}

/// Local KV tokens of this rank whose global position is <= p: a prefix of
/// the local tokens, since local-to-global is increasing.
COBATCH_ALWAYS_INLINE std::int64_t visible_prefix(std::int64_t p, std::int32_t world, std::int32_t rank,
                                                  std::int32_t interleave) noexcept {
  const std::int64_t len = p + 1;
  const std::int64_t stride = static_cast<std::int64_t>(interleave) * world;
  const std::int64_t full = len / stride;
  const std::int64_t rest = len - full * stride - static_cast<std::int64_t>(rank) * interleave;
  return full * interleave + std::clamp<std::int64_t>(rest, 0, interleave);
}

// Eight floats, the width of an AVX register, read and written through a
// type of alignment 4 that may alias floats (as the intrinsics headers'
// __m256_u). Used only as local values, never passed to or returned from a
// function, so that their calling convention never depends on whether AVX is
// on; where it is off (the baseline clone) the compiler splits each into two
// SSE operations.
using f32x8 = float __attribute__((vector_size(32)));
// A typedef, not an alias declaration: Clang keeps the lowered alignment
// only on a typedef; with `using` it emits aligned moves (movaps), which
// fault on the scores' rows, at any float offset.
typedef float f32x8_unaligned __attribute__((vector_size(32), aligned(4), may_alias));

// The scores of eight tokens for one query head: q against the K rows k,
// k + stride, ..., k + 7 stride, times scale, into out[0..8). Summing one
// product's lanes costs a horizontal reduction per score; the eight
// accumulators instead reduce together, in three rounds of pairwise sums
// (hadd), to one vector of the eight scores. d is a multiple of 8.
template <std::size_t D>
COBATCH_ALWAYS_INLINE void scores8(const float* q, const float* k, std::size_t stride, std::size_t d, float scale,
                                   float* out) noexcept {
  const std::size_t n = D != 0 ? D : d;
  f32x8 acc[8] = {};
  for (std::size_t i = 0; i < n; i += 8) {
    const f32x8 qv = *reinterpret_cast<const f32x8_unaligned*>(q + i);
    for (std::size_t t = 0; t < 8; ++t) acc[t] += qv * *reinterpret_cast<const f32x8_unaligned*>(k + t * stride + i);
  }
  // hadd(a, b): within each 128-bit half, [a0+a1, a2+a3, b0+b1, b2+b3].
  auto hadd = [](const f32x8& x, const f32x8& y, f32x8& r) COBATCH_ALWAYS_INLINE_LAMBDA {
    r = __builtin_shufflevector(x, y, 0, 2, 8, 10, 4, 6, 12, 14) + __builtin_shufflevector(x, y, 1, 3, 9, 11, 5, 7, 13, 15);
  };
  f32x8 h01, h23, h45, h67, g0, g1;
  hadd(acc[0], acc[1], h01);
  hadd(acc[2], acc[3], h23);
  hadd(acc[4], acc[5], h45);
  hadd(acc[6], acc[7], h67);
  hadd(h01, h23, g0);  // [t0 t1 t2 t3 | t0 t1 t2 t3], each a half's sum
  hadd(h45, h67, g1);  // the same for t4..t7
  const f32x8 sum = __builtin_shufflevector(g0, g1, 0, 1, 2, 3, 8, 9, 10, 11) +
                    __builtin_shufflevector(g0, g1, 4, 5, 6, 7, 12, 13, 14, 15);
  *reinterpret_cast<f32x8_unaligned*>(out) = sum * scale;
}

// acc[0..w) += sum over tokens t in [0, count) of wt[t] * v[t * stride + ..]:
// one query head's weighted V rows, w (<= 64, a multiple of 8) columns kept
// in registers across the tokens and written once.
COBATCH_ALWAYS_INLINE void weighted_rows(const float* wt, const float* v, std::size_t stride, std::size_t count,
                                         std::size_t w, float* acc) noexcept {
  constexpr std::size_t lanes = 8, most = 8;
  f32x8 sum[most] = {};
  const std::size_t vecs = w / lanes;
  for (std::size_t j = 0; j < most; ++j)
    if (j < vecs) sum[j] = *reinterpret_cast<const f32x8_unaligned*>(acc + j * lanes);
  for (std::size_t t = 0; t < count; ++t) {
    const float x = wt[t];
    const float* row = v + t * stride;
    for (std::size_t j = 0; j < most; ++j)
      if (j < vecs) sum[j] += x * *reinterpret_cast<const f32x8_unaligned*>(row + j * lanes);
  }
  for (std::size_t j = 0; j < most; ++j)
    if (j < vecs) *reinterpret_cast<f32x8_unaligned*>(acc + j * lanes) = sum[j];
}

// Partial sums of a dot product: independent lanes the compiler may keep in
// vector registers (one float sum is a serial chain it must not reorder).
constexpr std::size_t dot_lanes = 8;

// D is the head dimension when fixed at compile time (64, 128), 0 otherwise.
template <std::size_t D>
COBATCH_ALWAYS_INLINE float dot(const float* __restrict x, const float* __restrict y, std::size_t d) noexcept {
  static_assert(D % dot_lanes == 0, "a fixed head dim leaves no tail");
  const std::size_t n = D != 0 ? D : d;
  float part[dot_lanes] = {};
  std::size_t i = 0;
  for (; i + dot_lanes <= n; i += dot_lanes) {
    for (std::size_t k = 0; k < dot_lanes; ++k) part[k] += x[i + k] * y[i + k];
  }
  float s = 0.0f;
  if constexpr (D == 0) {
    for (; i < n; ++i) s += x[i] * y[i];
  }
  for (std::size_t k = 0; k < dot_lanes; ++k) s += part[k];
  return s;
}

template <std::size_t D>
COBATCH_ALWAYS_INLINE void axpy(float w, const float* __restrict x, float* __restrict y, std::size_t d) noexcept {
  const std::size_t n = D != 0 ? D : d;
  for (std::size_t i = 0; i < n; ++i) y[i] += w * x[i];
}

// One head's scores s[0..n) become exp(s - max), four at a time; max and
// the sum of the exps are returned. A score below max - 87 is taken as
// max - 87: exp(-87) ~ 1e-38 weighs nothing beside the max's exp(0) = 1 in
// the same sum. A NaN score is passed on (the compares are false for it).
COBATCH_ALWAYS_INLINE void softmax_weights(float* s, std::size_t n, float& max, float& sum) noexcept {
  constexpr f32x4 floor = {-87.0f, -87.0f, -87.0f, -87.0f};
  f32x4 m4 = {neg_inf, neg_inf, neg_inf, neg_inf};
  std::size_t t = 0;
  for (; t + 4 <= n; t += 4) {
    const f32x4 x = load4(s + t);
    m4 = select(x > m4, x, m4);
  }
  float m = std::max(std::max(m4[0], m4[1]), std::max(m4[2], m4[3]));
  for (; t < n; ++t) m = std::max(m, s[t]);
  f32x4 sum4 = {0.0f, 0.0f, 0.0f, 0.0f};
  t = 0;
  for (; t + 4 <= n; t += 4) {
    f32x4 x = load4(s + t) - m;
    x = select(x < floor, floor, x);
    const f32x4 e = exp_nonpositive(x);
    store4(s + t, e);
    sum4 += e;
  }
  float total = (sum4[0] + sum4[1]) + (sum4[2] + sum4[3]);
  for (; t < n; ++t) {
    const float x = s[t] - m;
    const float e = std::isnan(x) ? x : exp_nonpositive(x < -87.0f ? -87.0f : x);  // NaN: passed on, never converted
    s[t] = e;
    total += e;
  }
  max = m;
  sum = total;
}

// n elements of K or V rows as floats: the rows themselves for f32, else
// converted into `tmp`.
COBATCH_ALWAYS_INLINE const float* as_floats(const float* row, float* /*tmp*/, std::size_t /*n*/) noexcept { return row; }
template <class T>
COBATCH_ALWAYS_INLINE const float* as_floats(const T* row, float* tmp, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) tmp[i] = row[i].to_float();
  return tmp;
}

// One query row against its visible KV, all query heads at once: each token's
// K and V rows (every KV head, contiguous in the page) are read, and for
// bf16/f16 converted, once per query row rather than once per query head.
// Three passes over the chunk, walked a page-contiguous run at a time: the
// scores of every head (eight tokens at a time), then per head the max and
// one exp pass, then the V rows weighted into the accumulators.
template <class T, std::size_t D>
COBATCH_ALWAYS_INLINE void attention_typed(const paged_attention_args& a) {
  const auto* q = static_cast<const T*>(a.q);
  const auto* pages = static_cast<const T*>(a.kv_pages);
  const std::size_t d = D != 0 ? D : static_cast<std::size_t>(a.head_dim);
  const std::size_t hq = static_cast<std::size_t>(a.num_qo_heads);
  const std::size_t hkv = static_cast<std::size_t>(a.num_kv_heads);
  const std::size_t group = hq / hkv;
  const std::size_t token_stride = hkv * d;  // elements per token row within K (or V)
  const std::size_t half_page = static_cast<std::size_t>(a.page_size) * token_stride;  // K block; V follows
  const std::size_t page_stride = 2 * half_page;

  thread_local std::vector<float> scores;  // [hq][visible tokens]: scores, then weights
  thread_local std::vector<float> qrows;   // [hq][d]
  thread_local std::vector<float> acc;     // [hq][d]
  thread_local std::vector<float> stats;   // [hq] max, [hq] sum
  thread_local std::vector<float> kv_block;  // one run's K or V rows converted to f32 (bf16, f16)
  qrows.resize(hq * d);
  acc.resize(hq * d);
  stats.resize(2 * hq);
  if constexpr (!std::is_same_v<T, float>) kv_block.resize(half_page);
  // Eight tokens' scores at a time, and V rows in registers: d a multiple
  // of 8 (always for the head dims fixed at compile time).
  const bool vectors = d % 8 == 0;
  float* const qh = qrows.data();
  float* const acch = acc.data();
  float* const mx = stats.data();
  float* const sums = stats.data() + hq;

  for (std::int32_t w = 0; w < a.num_work; ++w) {
    const attention_work_item item = a.work != nullptr ? a.work[w] : attention_work_item{w, 0, a.requests[w].kv_len, -1};
    const attention_request& req = a.requests[item.request];
    const std::int32_t* req_pages = a.kv_indices + req.page_begin;
    for (std::int32_t j = 0; j < req.q_len; ++j) {
      const std::int64_t p = static_cast<std::int64_t>(req.seq_len) - req.q_len + j;
      const std::int64_t visible = visible_prefix(p, a.dcp_world, a.dcp_rank, a.dcp_interleave);
      const std::int64_t end = std::min<std::int64_t>(item.kv_end, visible);
      const std::int64_t begin = item.kv_begin;
      const std::size_t n = end > begin ? static_cast<std::size_t>(end - begin) : 0;
      const std::size_t row = static_cast<std::size_t>(req.q_begin + j);
      // fn(offset of the first token's K row, index of the token in [0, n),
      // tokens) for each run of [begin, end) that is contiguous in one page.
      auto for_each_run = [&](auto fn) {
        for (std::int64_t l = begin; l < end;) {
          const std::int64_t in_page = l % a.page_size;
          const std::int64_t count = std::min<std::int64_t>(a.page_size - in_page, end - l);
          const std::size_t page = static_cast<std::size_t>(req_pages[l / a.page_size]);
          fn(page * page_stride + static_cast<std::size_t>(in_page) * token_stride, static_cast<std::size_t>(l - begin),
             static_cast<std::size_t>(count));
          l += count;
        }
      };
      scores.resize(hq * n);
      float* const sc = scores.data();
      for (std::size_t i = 0; i < hq * d; ++i) qh[i] = load(q, row * hq * d + i);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for_each_run([&](std::size_t koff, std::size_t t0, std::size_t count) {
        const float* kb = as_floats(pages + koff, kv_block.data(), count * token_stride);
        for (std::size_t h = 0; h < hq; ++h) {
          const float* k = kb + (h / group) * d;
          float* out = sc + h * n + t0;
          std::size_t t = 0;
          if (vectors) {
            for (; t + 8 <= count; t += 8) scores8<D>(qh + h * d, k + t * token_stride, token_stride, d, a.sm_scale, out + t);
          }
          for (; t < count; ++t) out[t] = dot<D>(qh + h * d, k + t * token_stride, d) * a.sm_scale;
        }
      });
      for (std::size_t h = 0; h < hq; ++h) {
        float* s = sc + h * n;
        softmax_weights(s, n, mx[h], sums[h]);
      }
      // The V rows weighted into the accumulators, a token at a time for
      // every head (bf16 and f16 rows are converted once per run).
      auto weigh_by_token = [&] {
        for_each_run([&](std::size_t koff, std::size_t t0, std::size_t count) {
          const float* vb = as_floats(pages + koff + half_page, kv_block.data(), count * token_stride);
          for (std::size_t t = 0; t < count; ++t) {
            const float* v = vb + t * token_stride;
            for (std::size_t h = 0; h < hq; ++h) axpy<D>(sc[h * n + t0 + t], v + (h / group) * d, acch + h * d, d);
          }
        });
      };
      if constexpr (std::is_same_v<T, float>) {
        if (vectors) {
          // f32: per query head, a tile of up to 64 columns in registers
          // across all the visible tokens, so that the accumulators are
          // written once rather than once per token. The group's heads read
          // the same V rows, from the cache.
          constexpr std::size_t tile = 64;
          for (std::size_t h = 0; h < hq; ++h) {
            for (std::size_t i0 = 0; i0 < d; i0 += tile) {
              const std::size_t cols = D != 0 && D % tile == 0 ? tile : std::min(tile, d - i0);
              for_each_run([&](std::size_t koff, std::size_t t0, std::size_t count) {
                weighted_rows(sc + h * n + t0, pages + koff + half_page + (h / group) * d + i0, token_stride, count, cols,
                              acch + h * d + i0);
              });
            }
          }
        } else {
          weigh_by_token();
        }
      } else {
        weigh_by_token();
      }
      for (std::size_t h = 0; h < hq; ++h) {
        float* o = acch + h * d;
        float lse = neg_inf;
        if (n > 0) {
          const float inv = 1.0f / sums[h];
          for (std::size_t i = 0; i < d; ++i) o[i] *= inv;
          lse = mx[h] + std::log(sums[h]);
        }
        if (item.partial_row < 0) {
          store_row(a.out, (row * hq + h) * d, o, d, a.out_type);
          if (a.out_lse != nullptr) a.out_lse[row * hq + h] = lse == neg_inf ? neg_inf : lse * a.lse_out_scale;
        } else {
          const std::size_t prow = static_cast<std::size_t>(item.partial_row + j);
          std::copy(o, o + d, a.partial_out + (prow * hq + h) * d);
          a.partial_lse[prow * hq + h] = lse;
        }
      }
    }
  }
}

/// Merges n states of one row: o_i at out_i(i), lse_i natural. Writes the
/// merged f32 row to `dst` and returns the merged natural LSE.
template <class OutAt, class LseAt>
float merge_row(std::int32_t n, std::size_t d, OutAt out_i, LseAt lse_i, float* dst) {
  float m = neg_inf;
  for (std::int32_t i = 0; i < n; ++i) {
    const float l = lse_i(i);
    if (std::isfinite(l)) m = std::max(m, l);
  }
  std::fill(dst, dst + d, 0.0f);
  if (m == neg_inf) return neg_inf;
  float sum = 0.0f;
  for (std::int32_t i = 0; i < n; ++i) {
    const float l = lse_i(i);
    if (!std::isfinite(l)) continue;
    const float w = std::exp(l - m);
    sum += w;
    const float* o = out_i(i);
    for (std::size_t k = 0; k < d; ++k) dst[k] += w * o[k];
  }
  const float inv = 1.0f / sum;
  for (std::size_t k = 0; k < d; ++k) dst[k] *= inv;
  return m + std::log(sum);
}

}  // namespace

// Built twice, for AVX2 with FMA and for the baseline (COBATCH_HOST_CLONES):
// a batched decode's attention runs on the stream's one thread while the
// other cores wait for the next matrix product.
COBATCH_HOST_CLONES void paged_attention(const paged_attention_args& a) {
  with_element_type(a.storage, "paged attention", [&](auto tag) COBATCH_ALWAYS_INLINE_LAMBDA {
    using T = decltype(tag);
    switch (a.head_dim) {
      case 64: attention_typed<T, 64>(a); return;
      case 128: attention_typed<T, 128>(a); return;
      default: attention_typed<T, 0>(a); return;
    }
  });
}

void chunk_merge(const chunk_merge_args& a) {
  const std::size_t d = static_cast<std::size_t>(a.head_dim);
  const std::size_t h = static_cast<std::size_t>(a.num_heads);
  thread_local std::vector<float> row;
  row.resize(d);
  for (std::int32_t it = 0; it < a.num_items; ++it) {
    const chunk_merge_item& item = a.items[it];
    for (std::int32_t j = 0; j < item.q_len; ++j) {
      for (std::size_t head = 0; head < h; ++head) {
        auto prow = [&](std::int32_t c) {
          return static_cast<std::size_t>(item.first_row + c * item.q_len + j) * h + head;
        };
        const float lse = merge_row(
            item.num_chunks, d, [&](std::int32_t c) { return a.partial_out + prow(c) * d; },
            [&](std::int32_t c) { return a.partial_lse[prow(c)]; }, row.data());
        const std::size_t out_row = static_cast<std::size_t>(item.q_begin + j) * h + head;
        store_row(a.out, out_row * d, row.data(), d, a.out_type);
        if (a.out_lse != nullptr) a.out_lse[out_row] = lse == neg_inf ? neg_inf : lse * a.lse_out_scale;
      }
    }
  }
}

namespace {

// The normalised weights of `rows` (<= block) rows' shards, four rows at a
// time in vector registers, and the rows' merged LSEs. On entry
// w[i * block + j] holds shard i's natural LSE of row j, rows up to a
// multiple of 4 padded with -inf; on return its weight. A shard whose LSE is
// -inf, +inf or NaN, or whose weight is below exp(-87) ~ 1e-38 beside the
// largest one, gets weight 0: they are told apart here, and only here, so the
// sums need no test per element. Inlined into each clone of lse_merge, so
// that it is built with the clone's instructions (FMA).
COBATCH_ALWAYS_INLINE void block_weights(float* w, std::size_t block, std::size_t n, std::int64_t rows,
                                         const lse_merge_args& a, std::int64_t r0) noexcept {
  constexpr f32x4 none = {neg_inf, neg_inf, neg_inf, neg_inf};
  constexpr f32x4 zero = {0.0f, 0.0f, 0.0f, 0.0f};
  for (std::int64_t j = 0; j < rows; j += 4) {
    f32x4 m = none;  // the largest finite LSE, -inf for a row with none
    for (std::size_t i = 0; i < n; ++i) {
      const f32x4 l = load4(w + i * block + static_cast<std::size_t>(j));
      m = select(finite4(l) & (l > m), l, m);
    }
    f32x4 sum = zero;
    for (std::size_t i = 0; i < n; ++i) {
      float* p = w + i * block + static_cast<std::size_t>(j);
      const f32x4 x = load4(p) - m;  // not finite where the LSE is not
      const i32x4 keep = finite4(x) & (x >= -87.0f);
      const f32x4 e = select(keep, exp_nonpositive(select(keep, x, zero)), zero);
      sum += e;
      store4(p, e);
    }
    const i32x4 any = sum > 0.0f;
    const f32x4 inv = select(any, 1.0f / select(any, sum, zero + 1.0f), zero);
    for (std::size_t i = 0; i < n; ++i) {
      float* p = w + i * block + static_cast<std::size_t>(j);
      store4(p, load4(p) * inv);
    }
    if (a.out_lse == nullptr) continue;
    for (std::int64_t k = 0; k < 4 && j + k < rows; ++k) {
      a.out_lse[r0 + j + k] = m[k] == neg_inf ? neg_inf : (m[k] + std::log(sum[k])) * a.lse_out_scale;
    }
  }
}

// Writes v's 8 floats to p (16-byte aligned) with non-temporal stores where
// the CPU has them (x86's SSE): write-combined lines go to memory without
// being read into the cache first, as memcpy's stores of large copies do.
// Needs _mm_sfence() before the data is handed to another thread.
COBATCH_ALWAYS_INLINE void store_streaming(float* p, const f32x8& v) noexcept {
#if defined(__SSE__)
  f32x4 half[2];
  std::memcpy(half, &v, sizeof half);
  _mm_stream_ps(p, half[0]);
  _mm_stream_ps(p + 4, half[1]);
#else
  std::memcpy(p, &v, sizeof v);
#endif
}

// One row summed over its shards: dst[k] = sum of w[i * w_stride] *
// src[i][k], 32 floats (two cache lines of each shard) per step in four
// vector accumulators. N is the shard count when fixed at compile time (0:
// n, at run time): the shard loop is then unrolled with the weights and
// sources in registers, so that the loop issues little but the loads and the
// core keeps more of them in flight (the merge waits on memory, not on
// arithmetic). Stream: dst is 16-byte aligned and d a multiple of 4, and is
// written by store_streaming.
template <std::size_t N, bool Stream>
COBATCH_ALWAYS_INLINE void sum_row(std::size_t n, std::size_t d, const float* w, std::size_t w_stride,
                                   const float* const* src, float* dst) noexcept {
  constexpr std::size_t lanes = 8, tile = 4 * lanes;
  const std::size_t shards = N != 0 ? N : n;
  float wl[N != 0 ? N : 1];
  const float* sl[N != 0 ? N : 1];
  for (std::size_t i = 0; i < (N != 0 ? N : 0); ++i) {
    wl[i] = w[i * w_stride];
    sl[i] = src[i];
  }
  const float* const wp = N != 0 ? wl : w;
  const std::size_t ws = N != 0 ? 1 : w_stride;
  const float* const* const sp = N != 0 ? sl : src;
  std::size_t k0 = 0;
  for (; k0 + tile <= d; k0 += tile) {
    f32x8 acc[4] = {};
    for (std::size_t i = 0; i < shards; ++i) {
      const float wi = wp[i * ws];
      const auto* o = reinterpret_cast<const f32x8_unaligned*>(sp[i] + k0);
      for (std::size_t v = 0; v < 4; ++v) acc[v] += wi * o[v];
    }
    for (std::size_t v = 0; v < 4; ++v) {
      if constexpr (Stream) {
        store_streaming(dst + k0 + v * lanes, acc[v]);
      } else {
        *reinterpret_cast<f32x8_unaligned*>(dst + k0 + v * lanes) = acc[v];
      }
    }
  }
  for (; k0 < d; ++k0) {
    float x = 0.0f;
    for (std::size_t i = 0; i < shards; ++i) x += wp[i * ws] * sp[i][k0];
    dst[k0] = x;
  }
}

}  // namespace

// Two phases per block of 256 rows: the weights of every (row, shard), four
// rows at a time in vector registers (8 exps per row by a polynomial, not a
// library call each), then the rows summed over all shards in register
// tiles, each shard's values read once and the output written once. A shard
// of weight 0 (empty, or negligible) is read from a row of zeros instead of
// its own values, which may be anything (NaN, inf): the sum is then the same
// for every row, with no branch or shard count that varies inside it. An f32
// output of more than stream_threshold bytes is written with non-temporal
// stores: it cannot stay in the cache for its reader anyway, and ordinary
// stores would first read every line of it from memory (a tenth more
// traffic with 8 shards).
//
// Built twice, for AVX2 with FMA and for the baseline (COBATCH_HOST_CLONES):
// the sums must keep up with memcpy's wide loads.
COBATCH_HOST_CLONES void lse_merge(const lse_merge_args& a) {
  const std::size_t d = static_cast<std::size_t>(a.head_dim);
  const std::size_t n = static_cast<std::size_t>(a.num_shards);
  // Rows per block, a multiple of 4. Longer blocks measured faster than 64
  // (the LSE reads of a block come in longer runs, the sums pause less often).
  constexpr std::int64_t block = 256;
  // A core's share of a large last-level cache: above it the output is
  // streamed (glibc's memcpy streams its stores above a similar size).
  constexpr std::size_t stream_threshold = std::size_t{4} << 20;
  thread_local std::vector<float> weights;         // [shards][block]: LSEs, then weights
  thread_local std::vector<const float*> sources;  // [shards]
  thread_local std::vector<float> zeros;
  thread_local std::vector<float> row;  // for outputs other than f32
  weights.resize(static_cast<std::size_t>(block) * n);
  sources.resize(n);
  zeros.assign(d, 0.0f);
  row.resize(d);
  const bool f32 = a.out_type == data_type::f32;
#if defined(__SSE__)
  const bool stream = f32 && reinterpret_cast<std::uintptr_t>(a.out) % 16 == 0 && d % 4 == 0 &&
                      static_cast<std::size_t>(a.rows) * d * sizeof(float) > stream_threshold;
#else
  constexpr bool stream = false;
#endif
  for (std::int64_t r0 = 0; r0 < a.rows; r0 += block) {
    const std::int64_t rows = std::min(block, a.rows - r0);
    for (std::size_t i = 0; i < n; ++i) {
      const float* l = a.shard_lse + static_cast<std::int64_t>(i) * a.shard_lse_stride + r0;
      float* w = weights.data() + i * block;
      for (std::int64_t j = 0; j < rows; ++j) w[j] = l[j] * a.lse_in_scale;
      std::fill(w + rows, w + (rows + 3) / 4 * 4, neg_inf);
    }
    block_weights(weights.data(), block, n, rows, a, r0);
    for (std::int64_t j = 0; j < rows; ++j) {
      const std::int64_t r = r0 + j;
      const float* w = weights.data() + j;  // shard i's weight at w[i * block]
      for (std::size_t i = 0; i < n; ++i) {
        sources[i] = w[i * block] != 0.0f ? a.shard_out + static_cast<std::int64_t>(i) * a.shard_out_stride +
                                                r * static_cast<std::int64_t>(d)
                                          : zeros.data();
      }
      float* dst = f32 ? static_cast<float*>(a.out) + static_cast<std::size_t>(r) * d : row.data();
      const float* const* src = sources.data();
      if (stream) {
        switch (n) {
          case 2: sum_row<2, true>(n, d, w, block, src, dst); break;
          case 4: sum_row<4, true>(n, d, w, block, src, dst); break;
          case 8: sum_row<8, true>(n, d, w, block, src, dst); break;
          default: sum_row<0, true>(n, d, w, block, src, dst); break;
        }
      } else {
        switch (n) {
          case 2: sum_row<2, false>(n, d, w, block, src, dst); break;
          case 4: sum_row<4, false>(n, d, w, block, src, dst); break;
          case 8: sum_row<8, false>(n, d, w, block, src, dst); break;
          default: sum_row<0, false>(n, d, w, block, src, dst); break;
        }
      }
      if (!f32) store_row(a.out, static_cast<std::size_t>(r) * d, dst, d, a.out_type);
    }
  }
#if defined(__SSE__)
  // The streamed lines must reach memory before the caller (or the stream's
  // next waiter, on another thread) reads the output.
  if (stream) _mm_sfence();
#endif
}

void lse_correct(const lse_correct_args& a) {
  const std::size_t d = static_cast<std::size_t>(a.head_dim);
  const std::int32_t hw = a.num_heads / a.world;
  for (std::int32_t t = 0; t < a.num_tokens; ++t) {
    for (std::int32_t h = 0; h < a.num_heads; ++h) {
      float m = neg_inf;
      for (std::int32_t r = 0; r < a.world; ++r) {
        const float l = a.all_lse[(static_cast<std::size_t>(r) * a.num_tokens + t) * a.num_heads + h];
        if (std::isfinite(l)) m = std::max(m, l);
      }
      float global = neg_inf;
      if (m != neg_inf) {
        float sum = 0.0f;
        for (std::int32_t r = 0; r < a.world; ++r) {
          const float l = a.all_lse[(static_cast<std::size_t>(r) * a.num_tokens + t) * a.num_heads + h];
          if (std::isfinite(l)) sum += std::exp(l - m);
        }
        global = m + std::log(sum);
      }
      const float local = a.all_lse[(static_cast<std::size_t>(a.rank) * a.num_tokens + t) * a.num_heads + h];
      const float scale = (std::isfinite(local) && global != neg_inf) ? std::exp(local - global) : 0.0f;
      const std::int32_t dest = h / hw;
      const std::int32_t hh = h % hw;
      const float* src = a.local_out + (static_cast<std::size_t>(t) * a.num_heads + h) * d;
      float* dst = a.scatter_out + ((static_cast<std::size_t>(dest) * a.num_tokens + t) * hw + hh) * d;
      if (scale == 0.0f) {
        std::fill(dst, dst + d, 0.0f);
      } else {
        for (std::size_t k = 0; k < d; ++k) dst[k] = scale * src[k];
      }
      if (dest == a.rank && a.out_lse != nullptr) {
        a.out_lse[static_cast<std::size_t>(t) * hw + hh] = global == neg_inf ? neg_inf : global * a.lse_out_scale;
      }
    }
  }
}

void convert(const convert_args& a) { store_row(a.dst, 0, a.src, static_cast<std::size_t>(a.count), a.dst_type); }

namespace {

// Row i of a scatter or gather: fn(pool K row, pool V row, offset of row i in
// the row buffers, elements per row) for every row whose slot is not
// negative. The pool is const where the arguments only read it.
template <class T, class Args, class Fn>
void for_each_slot(const Args& a, Fn fn) {
  using pool_t = std::conditional_t<std::is_const_v<std::remove_pointer_t<decltype(a.kv_pages)>>, const T, T>;
  auto* pages = static_cast<pool_t*>(a.kv_pages);
  const std::size_t row = static_cast<std::size_t>(a.num_kv_heads) * a.head_dim;
  const std::size_t half_page = static_cast<std::size_t>(a.page_size) * row;
  for (std::int32_t i = 0; i < a.num_rows; ++i) {
    const std::int32_t slot = a.slots[i];
    if (slot < 0) continue;
    pool_t* kp = pages + static_cast<std::size_t>(slot / a.page_size) * 2 * half_page +
                 static_cast<std::size_t>(slot % a.page_size) * row;
    fn(kp, kp + half_page, static_cast<std::size_t>(i * a.row_stride), row);
  }
}

template <class T>
void append_typed(const kv_append_args& a) {
  auto* pages = static_cast<T*>(a.kv_pages);
  const auto* k = static_cast<const T*>(a.k);
  const auto* v = static_cast<const T*>(a.v);
  const std::size_t row = static_cast<std::size_t>(a.num_kv_heads) * a.head_dim;
  const std::size_t half_page = static_cast<std::size_t>(a.page_size) * row;
  const std::int64_t stride = static_cast<std::int64_t>(a.dcp_interleave) * a.dcp_world;
  for (std::int32_t r = 0; r < a.num_reqs; ++r) {
    const attention_request& req = a.requests[r];
    for (std::int32_t j = 0; j < req.q_len; ++j) {
      const std::int64_t p = static_cast<std::int64_t>(req.seq_len) - req.q_len + j;
      if ((p / a.dcp_interleave) % a.dcp_world != a.dcp_rank) continue;
      const std::int64_t l = (p / stride) * a.dcp_interleave + p % a.dcp_interleave;
      const std::size_t page = static_cast<std::size_t>(a.kv_indices[req.page_begin + l / a.page_size]);
      T* dst = pages + page * 2 * half_page + static_cast<std::size_t>(l % a.page_size) * row;
      const std::size_t src = static_cast<std::size_t>(req.q_begin + j) * row;
      std::copy(k + src, k + src + row, dst);
      std::copy(v + src, v + src + row, dst + half_page);
    }
  }
}

// The KV copies move bits: the element type only sets the width.
template <class Fn>
void with_element_width(data_type storage, const char* what, Fn&& fn) {
  switch (size_of(storage)) {
    case 4: fn(std::uint32_t{}); return;
    case 2: fn(std::uint16_t{}); return;
    default: break;
  }
  throw std::system_error(make_error_code(errc::invalid_argument),
                          std::string("cobatch: ") + what + " over " + name_of(storage) + " storage");
}

}  // namespace

void kv_append(const kv_append_args& a) {
  with_element_width(a.storage, "kv_append", [&](auto tag) { append_typed<decltype(tag)>(a); });
}

void kv_scatter(const kv_scatter_args& a) {
  with_element_width(a.storage, "kv_scatter", [&](auto tag) {
    using T = decltype(tag);
    const auto* k = static_cast<const T*>(a.k);
    const auto* v = static_cast<const T*>(a.v);
    for_each_slot<T>(a, [&](T* kp, T* vp, std::size_t i, std::size_t n) {
      std::copy(k + i, k + i + n, kp);
      std::copy(v + i, v + i + n, vp);
    });
  });
}

void kv_gather(const kv_gather_args& a) {
  with_element_width(a.storage, "kv_gather", [&](auto tag) {
    using T = decltype(tag);
    auto* k = static_cast<T*>(a.k);
    auto* v = static_cast<T*>(a.v);
    for_each_slot<T>(a, [&](const T* kp, const T* vp, std::size_t i, std::size_t n) {
      std::copy(kp, kp + n, k + i);
      std::copy(vp, vp + n, v + i);
    });
  });
}

}  // namespace cobatch::gpu::kernels::host
