// The host backend's paged attention kernel called directly, against a
// float64 reference: every path of the kernel (eight-token score blocks and
// the tokens after them, V rows summed in register tiles of 64 columns and a
// narrower last tile, the token-at-a-time path of head dims that are not a
// multiple of 8 and of bf16/f16 storage), decode and causal prefill rows, GQA,
// and requests split into chunks whose partial results and LSEs are checked
// too. The engine only plans head dims 64 and 128; the kernel takes any.
#include <cobatch/gpu/float16.hpp>
#include <cobatch/gpu/kernels/attention_kernels.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

using namespace cobatch::gpu;
using namespace cobatch::gpu::kernels;

namespace {

struct shape {
  std::int32_t head_dim;
  std::int32_t qo_heads;
  std::int32_t kv_heads;
  data_type storage;
};

template <class T>
T from_float(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    return T::from_float(x);
  }
}
template <class T>
float to_float(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    return x.to_float();
  }
}

// Requests of q_len 1 (decode) and 5 (prefill), contexts from 1 to 45 tokens
// on shuffled pages of 16; every request with more than 20 tokens split in
// two chunks at token 19 (partial rows), the rest whole.
template <class T>
void check_shape(const shape& s) {
  constexpr std::int32_t page = 16;
  const std::size_t d = static_cast<std::size_t>(s.head_dim);
  const std::size_t hq = static_cast<std::size_t>(s.qo_heads), hkv = static_cast<std::size_t>(s.kv_heads);
  std::mt19937 rng(static_cast<unsigned>(s.head_dim * 31 + s.qo_heads * 7 + s.kv_heads));
  std::uniform_real_distribution<float> val(-1.0f, 1.0f);

  const std::vector<std::int32_t> contexts = {1, 7, 8, 9, 16, 17, 23, 45, 33, 3};
  std::vector<attention_request> reqs;
  std::vector<std::int32_t> indices;
  std::int32_t tokens = 0, pages = 0;
  for (std::size_t i = 0; i < contexts.size(); ++i) {
    const std::int32_t q_len = i % 3 == 1 ? std::min(5, contexts[i]) : 1;
    reqs.push_back({tokens, q_len, contexts[i], static_cast<std::int32_t>(indices.size()), contexts[i]});
    for (std::int32_t p = 0; p < (contexts[i] + page - 1) / page; ++p) indices.push_back(pages++);
    tokens += q_len;
  }
  std::shuffle(indices.begin(), indices.end(), rng);

  std::vector<T> pool(static_cast<std::size_t>(pages) * 2 * page * hkv * d), q(static_cast<std::size_t>(tokens) * hq * d);
  for (auto& x : pool) x = from_float<T>(val(rng));
  for (auto& x : q) x = from_float<T>(val(rng));

  std::vector<attention_work_item> work;
  std::int32_t partial_rows = 0;
  for (std::size_t r = 0; r < reqs.size(); ++r) {
    const auto req = static_cast<std::int32_t>(r);
    if (reqs[r].kv_len > 20) {
      work.push_back({req, 0, 19, partial_rows});
      work.push_back({req, 19, reqs[r].kv_len, partial_rows + reqs[r].q_len});
      partial_rows += 2 * reqs[r].q_len;
    } else {
      work.push_back({req, 0, reqs[r].kv_len, -1});
    }
  }

  std::vector<float> out(q.size(), std::nanf("")), lse(static_cast<std::size_t>(tokens) * hq, std::nanf(""));
  std::vector<float> pout(static_cast<std::size_t>(partial_rows) * hq * d), plse(static_cast<std::size_t>(partial_rows) * hq);
  paged_attention_args a;
  a.storage = s.storage;
  a.out_type = data_type::f32;
  a.q = q.data();
  a.kv_pages = pool.data();
  a.num_pages = pages;
  a.page_size = page;
  a.num_qo_heads = s.qo_heads;
  a.num_kv_heads = s.kv_heads;
  a.head_dim = s.head_dim;
  a.sm_scale = 1.0f / std::sqrt(static_cast<float>(d));
  a.kv_indices = indices.data();
  a.requests = reqs.data();
  a.work = work.data();
  a.num_work = static_cast<std::int32_t>(work.size());
  a.num_tokens = tokens;
  a.max_q_len = 5;
  a.out = out.data();
  a.out_lse = lse.data();
  a.partial_out = pout.data();
  a.partial_lse = plse.data();
  host::paged_attention(a);

  // The float64 reference of one query row and head over KV tokens [b, e).
  auto reference = [&](const attention_request& req, std::int32_t j, std::size_t h, std::int32_t b, std::int32_t e,
                       std::vector<double>& o) {
    const std::int32_t* rp = indices.data() + req.page_begin;
    const std::size_t kh = h / (hq / hkv);
    auto kv = [&](std::int32_t t, std::size_t part, std::size_t i) {
      const std::size_t base = static_cast<std::size_t>(rp[t / page]) * 2 * page * hkv * d;
      return static_cast<double>(
          to_float(pool[base + part * page * hkv * d + (static_cast<std::size_t>(t % page) * hkv + kh) * d + i]));
    };
    const std::size_t row = static_cast<std::size_t>(req.q_begin + j);
    const std::int32_t last = std::min(e, req.seq_len - req.q_len + j + 1);  // causal
    std::vector<double> sc;
    double m = -INFINITY;
    for (std::int32_t t = b; t < last; ++t) {
      double x = 0.0;
      for (std::size_t i = 0; i < d; ++i) x += static_cast<double>(to_float(q[(row * hq + h) * d + i])) * kv(t, 0, i);
      sc.push_back(x * a.sm_scale);
      m = std::max(m, sc.back());
    }
    o.assign(d, 0.0);
    double sum = 0.0;
    for (std::int32_t t = b; t < last; ++t) {
      const double w = std::exp(sc[static_cast<std::size_t>(t - b)] - m);
      sum += w;
      for (std::size_t i = 0; i < d; ++i) o[i] += w * kv(t, 1, i);
    }
    for (auto& x : o) x /= sum;
    return m + std::log(sum);
  };

  double worst = 0.0, worst_lse = 0.0;
  std::vector<double> want;
  auto compare = [&](const float* got, float got_lse, double want_lse) {
    double scale = 0.0;
    for (double x : want) scale = std::max(scale, std::fabs(x));
    for (std::size_t i = 0; i < d; ++i) worst = std::max(worst, std::fabs(got[i] - want[i]) / std::max(scale, 1e-3));
    worst_lse = std::max(worst_lse, std::fabs(got_lse - want_lse));
  };
  for (const attention_work_item& w : work) {
    const attention_request& req = reqs[static_cast<std::size_t>(w.request)];
    for (std::int32_t j = 0; j < req.q_len; ++j) {
      for (std::size_t h = 0; h < hq; ++h) {
        const double l = reference(req, j, h, w.kv_begin, w.kv_end, want);
        if (w.partial_row < 0) {
          const std::size_t at = static_cast<std::size_t>(req.q_begin + j) * hq + h;
          compare(out.data() + at * d, lse[at], l);
        } else {
          const std::size_t at = static_cast<std::size_t>(w.partial_row + j) * hq + h;
          compare(pout.data() + at * d, plse[at], l);
        }
      }
    }
  }
  INFO("head dim " << s.head_dim << ", heads " << s.qo_heads << "/" << s.kv_heads << ", " << name_of(s.storage)
                   << ": largest relative error " << worst << ", LSE " << worst_lse);
  // bf16/f16 inputs are exact in the reference too; the sums are f32.
  CHECK(worst <= 2e-5);
  CHECK(worst_lse <= 2e-5);
}

}  // namespace

TEST_CASE("host paged attention: every kernel path against float64, decode and prefill rows, split chunks",
          "[gpu][attention]") {
  const std::vector<shape> shapes = {
      {64, 8, 2, data_type::f32},  {128, 8, 2, data_type::f32}, {64, 2, 1, data_type::f32},
      {96, 4, 4, data_type::f32},  {40, 6, 2, data_type::f32},  {12, 3, 1, data_type::f32},
      {64, 8, 2, data_type::bf16}, {96, 4, 2, data_type::f16},  {12, 2, 2, data_type::bf16},
  };
  for (const shape& s : shapes) {
    switch (s.storage) {
      case data_type::f32: check_shape<float>(s); break;
      case data_type::bf16: check_shape<bf16>(s); break;
      case data_type::f16: check_shape<f16>(s); break;
      default: FAIL("unexpected storage");
    }
  }
}
