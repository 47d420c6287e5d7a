#include <cobatch/engine/attention/lse.hpp>

#include "engine_test_support.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

using namespace cobatch;
using namespace cobatch::engine;
using cobatch::engine::test::thrown_by;

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();
constexpr float qnan = std::numeric_limits<float>::quiet_NaN();

struct shards {
  std::int32_t n;
  std::int64_t rows;
  std::int32_t d;
  std::vector<float> out, lse;  // lse natural
};

shards random_shards(std::mt19937& rng, std::int32_t n, std::int64_t rows, std::int32_t d, double empty_share) {
  shards s{n, rows, d, {}, {}};
  std::uniform_real_distribution<float> val(-2.0f, 2.0f);
  std::uniform_real_distribution<float> lse(-30.0f, 30.0f);
  std::uniform_real_distribution<double> coin(0, 1);
  s.out.resize(static_cast<std::size_t>(n * rows * d));
  s.lse.resize(static_cast<std::size_t>(n * rows));
  for (float& x : s.out) x = val(rng);
  for (float& x : s.lse) {
    x = lse(rng);
    if (coin(rng) < empty_share) {
      const int which = std::uniform_int_distribution<int>(0, 2)(rng);
      x = which == 0 ? -inf : which == 1 ? inf : qnan;
    }
  }
  return s;
}

// float64 merge over the finite shards.
void reference(const shards& s, std::vector<double>& out, std::vector<double>& lse) {
  out.assign(static_cast<std::size_t>(s.rows * s.d), 0.0);
  lse.assign(static_cast<std::size_t>(s.rows), -std::numeric_limits<double>::infinity());
  for (std::int64_t r = 0; r < s.rows; ++r) {
    double m = -std::numeric_limits<double>::infinity();
    for (std::int32_t i = 0; i < s.n; ++i) {
      const double l = s.lse[static_cast<std::size_t>(i * s.rows + r)];
      if (std::isfinite(l)) m = std::max(m, l);
    }
    if (!std::isfinite(m)) continue;
    double sum = 0;
    for (std::int32_t i = 0; i < s.n; ++i) {
      const double l = s.lse[static_cast<std::size_t>(i * s.rows + r)];
      if (std::isfinite(l)) sum += std::exp(l - m);
    }
    for (std::int32_t i = 0; i < s.n; ++i) {
      const double l = s.lse[static_cast<std::size_t>(i * s.rows + r)];
      if (!std::isfinite(l)) continue;
      const double w = std::exp(l - m) / sum;
      for (std::int32_t e = 0; e < s.d; ++e) {
        out[static_cast<std::size_t>(r * s.d + e)] += w * s.out[static_cast<std::size_t>((i * s.rows + r) * s.d + e)];
      }
    }
    lse[static_cast<std::size_t>(r)] = m + std::log(sum);
  }
}

}  // namespace

TEST_CASE("merge_lse agrees with a float64 reference for 1 to 10 shards with empty ones", "[engine][attention][lse]") {
  std::mt19937 rng(42);
  for (std::int32_t n = 1; n <= 10; ++n) {
    for (double empty : {0.0, 0.3, 0.9}) {
      const shards s = random_shards(rng, n, 37, 64, empty);
      std::vector<double> want_out, want_lse;
      reference(s, want_out, want_lse);
      std::vector<float> out(want_out.size(), qnan), lse(want_lse.size(), qnan);
      merge_lse({s.out, s.lse, lse_base::e, n, s.rows, s.d}, out, lse, lse_base::e);
      INFO("shards " << n << " empty share " << empty);
      for (std::size_t i = 0; i < out.size(); ++i) {
        REQUIRE(std::isfinite(out[i]));
        REQUIRE(std::abs(out[i] - want_out[i]) <= 1e-5 * std::max(1.0, std::abs(want_out[i])));
      }
      for (std::size_t r = 0; r < lse.size(); ++r) {
        REQUIRE_FALSE(std::isnan(lse[r]));
        if (std::isinf(want_lse[r])) {
          REQUIRE(lse[r] == -inf);
        } else {
          REQUIRE(std::abs(lse[r] - want_lse[r]) <= 1e-5 * std::max(1.0, std::abs(want_lse[r])));
        }
      }
    }
  }
}

TEST_CASE("merge_lse over many blocks with an output past the streaming size agrees with the reference",
          "[engine][attention][lse]") {
  // 8003 rows of 132: more than 4 MiB of output (written with non-temporal
  // stores), many blocks of rows, a last group of fewer than 4 rows and a
  // head dim that leaves a tail after the 32-float tiles; 3 shards take the
  // run-time shard count, 8 the unrolled one.
  std::mt19937 rng(4242);
  for (std::int32_t n : {3, 8}) {
    const shards s = random_shards(rng, n, 8003, 132, 0.2);
    std::vector<double> want_out, want_lse;
    reference(s, want_out, want_lse);
    std::vector<float> out(want_out.size(), qnan), lse(want_lse.size(), qnan);
    merge_lse({s.out, s.lse, lse_base::e, n, s.rows, s.d}, out, lse, lse_base::e);
    INFO("shards " << n);
    for (std::size_t i = 0; i < out.size(); ++i) {
      REQUIRE(std::abs(out[i] - want_out[i]) <= 1e-5 * std::max(1.0, std::abs(want_out[i])));
    }
    for (std::size_t r = 0; r < lse.size(); ++r) {
      if (std::isinf(want_lse[r])) {
        REQUIRE(lse[r] == -inf);
      } else {
        REQUIRE(std::abs(lse[r] - want_lse[r]) <= 1e-5 * std::max(1.0, std::abs(want_lse[r])));
      }
    }
  }
}

TEST_CASE("merge_lse: -inf, +inf and NaN shards add nothing; all empty gives 0 and -inf", "[engine][attention][lse]") {
  const std::int32_t d = 4;
  // Row 0: one real shard among -inf, +inf and NaN ones. Row 1: all empty.
  std::vector<float> out = {
      1, 2, 3, 4, /* shard 0 row 0 */ qnan, qnan, qnan, qnan, /* shard 0 row 1 */
      9, 9, 9, 9, /* shard 1 row 0 */ inf, inf, inf, inf,
      7, 7, 7, 7, /* shard 2 row 0 */ 5, 5, 5, 5,
      qnan, inf, -inf, 0, /* shard 3 row 0 */ 1, 1, 1, 1,
  };
  std::vector<float> lse = {0.5f, -inf, -inf, inf, inf, qnan, qnan, -inf};
  std::vector<float> merged(2 * d, 123.0f), merged_lse(2, 123.0f);
  merge_lse({out, lse, lse_base::e, 4, 2, d}, merged, merged_lse, lse_base::e);
  CHECK(merged[0] == 1.0f);
  CHECK(merged[3] == 4.0f);
  CHECK(merged_lse[0] == Approx(0.5f));
  for (int e = 0; e < d; ++e) CHECK(merged[static_cast<std::size_t>(d + e)] == 0.0f);
  CHECK(merged_lse[1] == -inf);
}

TEST_CASE("merge_lse in base 2 agrees with base e", "[engine][attention][lse]") {
  std::mt19937 rng(7);
  const shards s = random_shards(rng, 6, 50, 128, 0.2);
  std::vector<float> lse2(s.lse.size());
  for (std::size_t i = 0; i < lse2.size(); ++i) lse2[i] = s.lse[i] * 1.4426950408889634f;
  std::vector<float> out_e(static_cast<std::size_t>(s.rows * s.d)), lse_e(static_cast<std::size_t>(s.rows));
  std::vector<float> out_2(out_e.size()), lse_out2(lse_e.size());
  merge_lse({s.out, s.lse, lse_base::e, s.n, s.rows, s.d}, out_e, lse_e, lse_base::e);
  merge_lse({s.out, lse2, lse_base::two, s.n, s.rows, s.d}, out_2, lse_out2, lse_base::two);
  // The base-2 inputs were rounded to f32 after scaling (an LSE near 30 moves
  // by up to 4e-6), so the weights agree to about 1e-5 of the row's values,
  // which are at most 2 in magnitude.
  for (std::size_t i = 0; i < out_e.size(); ++i) REQUIRE(out_2[i] == Approx(out_e[i]).epsilon(1e-5).margin(2e-5));
  for (std::size_t r = 0; r < lse_e.size(); ++r) {
    if (std::isinf(lse_e[r])) {
      REQUIRE(lse_out2[r] == -inf);
    } else {
      REQUIRE(lse_out2[r] * 0.6931471805599453 == Approx(lse_e[r]).epsilon(1e-5));
    }
  }
}

TEST_CASE("merge_lse rejects sizes that do not match its counts", "[engine][attention][lse]") {
  std::vector<float> out(8), lse(2), merged(4), merged_lse(1);
  CHECK(thrown_by([&] { merge_lse({out, lse, lse_base::e, 0, 1, 4}, merged, merged_lse, lse_base::e); }).code() ==
        errc::invalid_argument);
  const auto e = thrown_by([&] { merge_lse({out, lse, lse_base::e, 2, 1, 4}, merged, std::span<float>(), lse_base::e); });
  CHECK(e.code() == errc::length_mismatch);
  CHECK_THAT(e.what(), Catch::Contains("out_lse holds 0"));
  std::error_code ec;
  merge_lse({out, lse, lse_base::e, 3, 1, 4}, merged, merged_lse, lse_base::e, ec);
  CHECK(ec == errc::length_mismatch);
}
