#include "cobatch/coro/generator.hpp"

#include "counted.hpp"

#include <catch2/catch.hpp>

#include <stdexcept>
#include <vector>

using namespace cobatch;

namespace {
coro::generator<int> count_to(int n) {
  for (int i = 0; i < n; ++i) co_yield i;
}
coro::generator<int> fails_after(int n) {
  for (int i = 0; i < n; ++i) co_yield i;
  throw std::runtime_error("generator failed");
}
coro::generator<int> holds(test::counted c) {
  (void)c;
  for (int i = 0;; ++i) co_yield i;
}
}  // namespace

TEST_CASE("generator yields lazily in order", "[coro][generator]") {
  std::vector<int> seen;
  for (int v : count_to(5)) seen.push_back(v);
  CHECK(seen == std::vector<int>{0, 1, 2, 3, 4});
  int n = 0;
  for (int v : count_to(0)) n += v + 1;
  CHECK(n == 0);
}

TEST_CASE("generator exceptions reach the iterating code", "[coro][generator]") {
  std::vector<int> seen;
  auto run = [&] {
    for (int v : fails_after(2)) seen.push_back(v);
  };
  CHECK_THROWS_WITH(run(), "generator failed");
  CHECK(seen == std::vector<int>{0, 1});
}

TEST_CASE("abandoning an infinite generator frees its frame", "[coro][generator][lifetime]") {
  test::counted::reset();
  {
    auto g = holds(test::counted{});
    int taken = 0;
    for (int v : g) {
      if (v == 3) break;
      ++taken;
    }
    CHECK(taken == 3);
    CHECK(test::counted::alive == 1);
  }
  CHECK(test::counted::alive == 0);
}
