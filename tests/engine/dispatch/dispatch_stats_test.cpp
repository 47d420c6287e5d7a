#include "cobatch/engine/dispatch/dispatch_stats.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cobatch/engine/error.hpp"

using namespace cobatch::engine;
using namespace std::chrono_literals;

TEST_CASE("histogram buckets tile the whole range without gaps", "[engine][dispatch][stats]") {
  CHECK(latency_histogram::bucket_low(0) == 0);
  for (std::size_t b = 0; b + 1 < latency_histogram::bucket_count; ++b) {
    REQUIRE(latency_histogram::bucket_high(b) + 1 == latency_histogram::bucket_low(b + 1));
    REQUIRE(latency_histogram::bucket_of(latency_histogram::bucket_low(b)) == b);
    REQUIRE(latency_histogram::bucket_of(latency_histogram::bucket_high(b)) == b);
  }
  CHECK(latency_histogram::bucket_of(~std::uint64_t{0}) == latency_histogram::bucket_count - 1);
  // Relative bucket width stays at or below 1/8 above the exact range.
  for (std::size_t b = 8; b + 1 < latency_histogram::bucket_count; ++b) {
    const std::uint64_t low = latency_histogram::bucket_low(b);
    const std::uint64_t width = latency_histogram::bucket_high(b) - low + 1;
    REQUIRE(width * 8 <= low);
  }
}

TEST_CASE("histogram percentiles track the exact ones within the bucket error", "[engine][dispatch][stats]") {
  latency_histogram h;
  std::vector<std::uint64_t> values;
  std::uint64_t state = 99;
  for (int i = 0; i < 20000; ++i) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    // Log-uniform-ish from ~1 us to ~1 ms.
    const std::uint64_t v = 1000 + ((state >> 20) % 1000) * ((state >> 40) % 1000 + 1);
    values.push_back(v);
    h.record(v);
  }
  std::sort(values.begin(), values.end());
  const auto exact = [&](double q) {
    return static_cast<double>(values[static_cast<std::size_t>(q * static_cast<double>(values.size())) - 1]);
  };
  const auto s = h.summary();
  CHECK(s.count == 20000);
  CHECK(s.min_ns == values.front());
  CHECK(s.max_ns == values.back());
  CHECK(static_cast<double>(s.p50_ns) == Approx(exact(0.50)).epsilon(1.0 / 16));
  CHECK(static_cast<double>(s.p99_ns) == Approx(exact(0.99)).epsilon(1.0 / 16));
  double sum = 0;
  for (auto v : values) sum += static_cast<double>(v);
  CHECK(s.mean_ns == Approx(sum / 20000.0));
}

TEST_CASE("histogram of one value reports that value", "[engine][dispatch][stats]") {
  latency_histogram h;
  CHECK(h.summary().count == 0);
  CHECK(h.quantile(0.5) == 0);
  h.record(12345);
  const auto s = h.summary();
  CHECK(s.p50_ns == 12345);  // clamped to the observed min and max
  CHECK(s.p99_ns == 12345);
  CHECK(s.mean_ns == 12345.0);
}

TEST_CASE("dispatch_stats counts per mode and the graph ratio", "[engine][dispatch][stats]") {
  dispatch_stats st;
  CHECK(st.graph_ratio() == 0.0);
  for (int i = 0; i < 6; ++i) st.record_dispatch(dispatch_mode::full);
  for (int i = 0; i < 2; ++i) st.record_dispatch(dispatch_mode::piecewise);
  for (int i = 0; i < 2; ++i) st.record_dispatch(dispatch_mode::eager);
  CHECK(st.dispatches(dispatch_mode::full) == 6);
  CHECK(st.dispatches(dispatch_mode::piecewise) == 2);
  CHECK(st.dispatches(dispatch_mode::eager) == 2);
  CHECK(st.total_dispatches() == 10);
  CHECK(st.graph_ratio() == Approx(0.8));

  st.record_latency(dispatch_mode::full, 100us);
  st.record_latency(dispatch_mode::full, 300us);
  st.record_latency(dispatch_mode::eager, std::uint64_t{5000});
  CHECK(st.latency(dispatch_mode::full).count == 2);
  CHECK(st.latency(dispatch_mode::full).mean_ns == Approx(200000.0));
  CHECK(st.latency(dispatch_mode::eager).count == 1);
  CHECK(st.latency(dispatch_mode::piecewise).count == 0);
  CHECK_THROWS_AS(st.record_latency(dispatch_mode::full, -1ns), engine_error);
  CHECK_THROWS_AS(st.record_latency(static_cast<dispatch_mode>(5), 1ns), engine_error);
}
