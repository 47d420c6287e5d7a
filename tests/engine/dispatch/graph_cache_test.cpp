#include "cobatch/engine/dispatch/graph_cache.hpp"

#include <catch2/catch.hpp>

#include <memory>
#include <stdexcept>
#include <vector>

#include "counted.hpp"

using namespace cobatch::engine;
using cobatch::test::counted;

namespace {

// Move-only, like a real graph handle, and counted, so tests see that evicted
// graphs are destroyed.
struct fake_graph {
  explicit fake_graph(int v) : value(std::make_unique<int>(v)) {}
  std::unique_ptr<int> value;
  counted life;
};

graph_key piecewise(std::uint32_t tokens) { return {dispatch_mode::piecewise, dispatch_key::for_tokens(tokens)}; }
graph_key full(std::uint32_t tokens) { return {dispatch_mode::full, dispatch_key::for_tokens(tokens)}; }

std::vector<std::uint32_t> tokens_by_recency(const graph_cache<fake_graph>& c) {
  std::vector<std::uint32_t> out;
  for (auto k : c.keys_by_recency()) out.push_back(k.key().tokens());
  return out;
}

errc code_of(const engine_error& e) { return static_cast<errc>(e.code().value()); }

}  // namespace

TEST_CASE("graph_cache finds what was inserted and counts hits and misses", "[engine][dispatch][cache]") {
  graph_cache<fake_graph> c;
  CHECK(c.find(piecewise(8)) == nullptr);
  auto& e = c.insert(piecewise(8), fake_graph(80), 1000);
  CHECK(*e.graph().value == 80);
  CHECK(e.bytes() == 1000);
  CHECK(e.key() == piecewise(8));
  auto* found = c.find(piecewise(8));
  REQUIRE(found == &e);
  CHECK(found->hits() == 1);
  CHECK(c.find(full(8)) == nullptr);  // same tokens, other mode: another graph
  CHECK(c.stats().hits == 1);
  CHECK(c.stats().misses == 2);
  CHECK(c.stats().captures == 1);
  CHECK(c.size() == 1);
  CHECK(c.bytes() == 1000);
  CHECK(c.peek(piecewise(8)) == &e);
  CHECK(c.stats().hits == 1);  // peek is not counted
}

TEST_CASE("graph_cache evicts the least recently used under the entry bound", "[engine][dispatch][cache]") {
  counted::reset();
  {
    graph_cache<fake_graph> c({.max_entries = 3});
    c.insert(piecewise(1), fake_graph(1), 10);
    c.insert(piecewise(2), fake_graph(2), 10);
    c.insert(piecewise(4), fake_graph(4), 10);
    CHECK(tokens_by_recency(c) == std::vector<std::uint32_t>{4, 2, 1});
    REQUIRE(c.find(piecewise(1)) != nullptr);  // 1 becomes the most recent; 2 is now the oldest
    CHECK(tokens_by_recency(c) == std::vector<std::uint32_t>{1, 4, 2});
    c.insert(piecewise(8), fake_graph(8), 10);
    CHECK(tokens_by_recency(c) == std::vector<std::uint32_t>{8, 1, 4});
    CHECK_FALSE(c.contains(piecewise(2)));
    CHECK(c.stats().evictions == 1);
    CHECK(counted::alive == 3);  // the evicted graph was destroyed
    c.insert(piecewise(16), fake_graph(16), 10);
    CHECK(tokens_by_recency(c) == std::vector<std::uint32_t>{16, 8, 1});
    CHECK(c.stats().evictions == 2);
    CHECK(c.size() == 3);
    CHECK(c.bytes() == 30);
  }
  CHECK(counted::alive == 0);
}

TEST_CASE("graph_cache evicts under the memory bound", "[engine][dispatch][cache]") {
  graph_cache<fake_graph> c({.max_entries = 100, .max_bytes = 1000});
  c.insert(piecewise(1), fake_graph(1), 400);
  c.insert(piecewise(2), fake_graph(2), 400);
  CHECK(c.bytes() == 800);
  c.insert(piecewise(4), fake_graph(4), 300);  // 1100 > 1000: the oldest (1) goes
  CHECK(tokens_by_recency(c) == std::vector<std::uint32_t>{4, 2});
  CHECK(c.bytes() == 700);
  c.insert(piecewise(8), fake_graph(8), 1000);  // needs the whole budget: everything goes
  CHECK(tokens_by_recency(c) == std::vector<std::uint32_t>{8});
  CHECK(c.bytes() == 1000);
  CHECK(c.stats().evictions == 3);
  c.insert(piecewise(16), fake_graph(16), 0);  // a graph of no memory still counts as an entry
  CHECK(c.size() == 2);
}

TEST_CASE("graph_cache honors both bounds at once", "[engine][dispatch][cache]") {
  graph_cache<fake_graph> c({.max_entries = 3, .max_bytes = 100});
  c.insert(piecewise(1), fake_graph(1), 10);
  c.insert(piecewise(2), fake_graph(2), 10);
  c.insert(piecewise(4), fake_graph(4), 10);
  c.insert(piecewise(8), fake_graph(8), 10);  // entry bound evicts 1
  CHECK(tokens_by_recency(c) == std::vector<std::uint32_t>{8, 4, 2});
  c.insert(piecewise(16), fake_graph(16), 85);  // entry bound evicts 2; memory (105) evicts 4
  CHECK(tokens_by_recency(c) == std::vector<std::uint32_t>{16, 8});
  CHECK(c.bytes() == 95);
  CHECK(c.stats().evictions == 3);
}

TEST_CASE("a graph larger than the memory bound is rejected and changes nothing", "[engine][dispatch][cache]") {
  graph_cache<fake_graph> c({.max_entries = 4, .max_bytes = 100});
  c.insert(piecewise(1), fake_graph(1), 60);
  try {
    c.insert(piecewise(2), fake_graph(2), 101);
    FAIL("expected no_capacity");
  } catch (const engine_error& e) {
    CHECK(code_of(e) == errc::no_capacity);
    CHECK_THAT(e.what(), Catch::Contains("101") && Catch::Contains("max_bytes=100"));
  }
  CHECK(c.size() == 1);
  CHECK(c.contains(piecewise(1)));
  CHECK(c.stats().evictions == 0);
  CHECK(c.stats().rejections == 1);
}

TEST_CASE("get_or_capture captures once; a failing capture inserts nothing", "[engine][dispatch][cache]") {
  counted::reset();
  graph_cache<fake_graph> c;
  int calls = 0;
  auto capture = [&](graph_key k) {
    ++calls;
    return captured_graph<fake_graph>{fake_graph(static_cast<int>(k.key().tokens())), 64};
  };
  auto& a = c.get_or_capture(full(32), capture);
  auto& b = c.get_or_capture(full(32), capture);
  CHECK(&a == &b);
  CHECK(calls == 1);
  CHECK(*a.graph().value == 32);
  CHECK(c.stats().captures == 1);
  CHECK(c.stats().misses == 1);
  CHECK(c.stats().hits == 1);

  const int alive_before = counted::alive;
  CHECK_THROWS_WITH(c.get_or_capture(full(64),
                                     [](graph_key) -> captured_graph<fake_graph> {
                                       throw std::runtime_error("capture failed: out of graph memory");
                                     }),
                    "capture failed: out of graph memory");
  CHECK_FALSE(c.contains(full(64)));
  CHECK(c.size() == 1);
  CHECK(c.bytes() == 64);
  CHECK(c.stats().captures == 1);
  CHECK(counted::alive == alive_before);
  // The key can still be captured later.
  CHECK(*c.get_or_capture(full(64), capture).graph().value == 64);
  CHECK(c.size() == 2);
}

TEST_CASE("capture_ahead captures largest first and skips cached keys", "[engine][dispatch][cache]") {
  graph_cache<fake_graph> c({.max_entries = 8});
  c.insert(piecewise(4), fake_graph(4), 1);
  std::vector<std::uint32_t> order;
  const std::vector<graph_key> keys{piecewise(1), piecewise(16), piecewise(4), piecewise(8), full(16)};
  const auto n = c.capture_ahead(keys, [&](graph_key k) {
    order.push_back(k.key().tokens());
    return captured_graph<fake_graph>{fake_graph(1), 1};
  });
  CHECK(n == 4);
  CHECK(order == std::vector<std::uint32_t>{16, 16, 8, 1});
  // The smallest, captured last, is the most recent: bounds drop big graphs first.
  CHECK(c.keys_by_recency().front() == piecewise(1));
}

TEST_CASE("insert replaces a graph under the same key", "[engine][dispatch][cache]") {
  graph_cache<fake_graph> c;
  c.insert(full(8), fake_graph(1), 100);
  auto& e = c.insert(full(8), fake_graph(2), 30);
  CHECK(*e.graph().value == 2);
  CHECK(c.size() == 1);
  CHECK(c.bytes() == 30);
  CHECK(c.erase(full(8)));
  CHECK_FALSE(c.erase(full(8)));
  CHECK(c.empty());
  CHECK(c.bytes() == 0);
}

TEST_CASE("graph_cache stays consistent through heavy churn", "[engine][dispatch][cache]") {
  // Exercises slot reuse and backward-shift deletion in the index.
  graph_cache<fake_graph> c({.max_entries = 17, .max_bytes = 5000});
  std::uint64_t state = 12345;
  auto next = [&] {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<std::uint32_t>(state >> 33);
  };
  for (int i = 0; i < 5000; ++i) {
    const std::uint32_t t = next() % 200 + 1;
    const auto k = (next() & 1) ? full(t) : piecewise(t);
    if (auto* e = c.find(k)) {
      REQUIRE(*e->graph().value == static_cast<int>(t));
    } else {
      c.insert(k, fake_graph(static_cast<int>(t)), next() % 600);
    }
    if (next() % 10 == 0) c.erase(piecewise(next() % 200 + 1));
    REQUIRE(c.size() <= 17);
    REQUIRE(c.bytes() <= 5000);
  }
  const auto keys = c.keys_by_recency();
  REQUIRE(keys.size() == c.size());
  std::size_t bytes = 0;
  for (auto k : keys) {
    const auto* e = c.peek(k);
    REQUIRE(e != nullptr);
    bytes += e->bytes();
  }
  CHECK(bytes == c.bytes());
}

TEST_CASE("graph_cache rejects zero bounds and eager keys", "[engine][dispatch][cache]") {
  CHECK_THROWS_AS(graph_cache<fake_graph>({.max_entries = 0}), engine_error);
  CHECK_THROWS_AS(graph_cache<fake_graph>({.max_entries = 1, .max_bytes = 0}), engine_error);
  graph_cache<fake_graph> c;
  try {
    c.insert({dispatch_mode::eager, dispatch_key::for_tokens(4)}, fake_graph(1), 1);
    FAIL("eager key accepted");
  } catch (const engine_error& e) {
    CHECK(code_of(e) == errc::unknown_mode);
  }
}
