#include "cobatch/engine/dispatch/capture_ladder.hpp"

#include <catch2/catch.hpp>

#include <vector>

#include "cobatch/engine/error.hpp"

using namespace cobatch::engine;

namespace {
// The obvious reference: scan for the first rung that holds the tokens.
std::optional<std::uint32_t> brute_force_pad(const std::vector<std::uint32_t>& sizes, std::uint32_t tokens) {
  if (tokens == 0) return std::nullopt;
  for (auto s : sizes)
    if (s >= tokens) return s;
  return std::nullopt;
}

errc code_of(const engine_error& e) { return static_cast<errc>(e.code().value()); }
}  // namespace

TEST_CASE("the standard ladder is 1, 2, 4, steps of 8 to 256, steps of 16 to the maximum", "[engine][dispatch]") {
  const auto ladder = capture_ladder::standard(512);
  std::vector<std::uint32_t> expected{1, 2, 4};
  for (std::uint32_t s = 8; s <= 256; s += 8) expected.push_back(s);
  for (std::uint32_t s = 272; s <= 512; s += 16) expected.push_back(s);
  CHECK(std::vector<std::uint32_t>(ladder.sizes().begin(), ladder.sizes().end()) == expected);
  CHECK(ladder.sizes().size() == 51);
  CHECK(ladder.max_size() == 512);
}

TEST_CASE("the standard ladder ends exactly at its maximum", "[engine][dispatch]") {
  const auto off_step = capture_ladder::standard(300);
  CHECK(off_step.max_size() == 300);
  CHECK(off_step.sizes()[off_step.sizes().size() - 2] == 288);
  const auto small = capture_ladder::standard(20);
  CHECK(std::vector<std::uint32_t>(small.sizes().begin(), small.sizes().end()) ==
        std::vector<std::uint32_t>{1, 2, 4, 8, 16, 20});
  const auto one = capture_ladder::standard(1);
  CHECK(one.sizes().size() == 1);
}

TEST_CASE("padding matches a brute-force scan for every token count", "[engine][dispatch]") {
  for (std::uint32_t max : {512u, 1000u, 8192u}) {
    const auto ladder = capture_ladder::standard(max);
    const std::vector<std::uint32_t> sizes(ladder.sizes().begin(), ladder.sizes().end());
    for (std::uint32_t t = 0; t <= max + 20; ++t) {
      const auto got = ladder.pad(t);
      const auto want = brute_force_pad(sizes, t);
      if (got != want) FAIL("max " << max << ", tokens " << t);
      CHECK(ladder.contains(t) == (t != 0 && want == t));
    }
  }
  const capture_ladder custom{3, 10, 11, 64};
  const std::vector<std::uint32_t> sizes{3, 10, 11, 64};
  for (std::uint32_t t = 0; t <= 80; ++t) REQUIRE(custom.pad(t) == brute_force_pad(sizes, t));
}

TEST_CASE("tokens above the largest rung are not padded", "[engine][dispatch]") {
  const auto ladder = capture_ladder::standard(512);
  CHECK(ladder.pad(512) == 512u);
  CHECK_FALSE(ladder.pad(513).has_value());
  CHECK_FALSE(ladder.pad(0xffffffffu).has_value());
}

TEST_CASE("bad ladders are rejected naming the value", "[engine][dispatch]") {
  auto reject = [](std::vector<std::uint32_t> sizes, const char* needle) {
    try {
      capture_ladder l{std::span<const std::uint32_t>(sizes)};
      FAIL("accepted a bad ladder");
    } catch (const engine_error& e) {
      CHECK(code_of(e) == errc::invalid_argument);
      CHECK_THAT(e.what(), Catch::Contains(needle));
    }
  };
  reject({}, "empty");
  reject({1, 0, 4}, "size 0 at index 1");
  reject({1, 8, 4}, "size 4 at index 2");
  reject({1, 4, 4}, "duplicate");
  reject({1, 1u << 24}, "16777216");
  CHECK_THROWS_AS(capture_ladder::standard(0), engine_error);
}
