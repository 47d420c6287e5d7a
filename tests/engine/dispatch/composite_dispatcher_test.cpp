#include "cobatch/engine/dispatch/composite_dispatcher.hpp"

#include "engine_test_support.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

using namespace cobatch::engine;
using cobatch::engine::test::thrown_by;

namespace {

struct fake_graph {
  graph_key key;
};

// Speculative decode: full graphs for uniform batches of query length 4.
graph_dispatcher<fake_graph> spec_decode() {
  dispatch_router r(capture_ladder{4, 8, 16, 32, 64});
  for (std::uint32_t reqs : {1u, 2u, 4u, 8u, 16u}) r.declare(dispatch_mode::full, dispatch_key::uniform_decode(reqs, 4));
  return graph_dispatcher<fake_graph>(std::move(r));
}

// Everything else: piecewise graphs on the standard ladder up to 256.
graph_dispatcher<fake_graph> general() {
  dispatch_router r(capture_ladder::standard(256));
  for (auto s : r.ladder().sizes()) r.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(s));
  return graph_dispatcher<fake_graph>(std::move(r));
}

graph_runners<fake_graph> runners(std::vector<std::string>& log, const std::string& who, bool capture = true) {
  graph_runners<fake_graph> r;
  r.eager = [&log, who](const dispatch_route& route, stream_index) {
    log.push_back(who + " eager " + std::to_string(route.run_tokens()));
  };
  r.replay = [&log, who](fake_graph&, const dispatch_route& route, stream_index) {
    log.push_back(who + " " + std::string(to_string(route.mode)) + " " + std::to_string(route.run_tokens()));
  };
  if (capture) r.capture = [](graph_key k, stream_index) { return captured_graph<fake_graph>{{k}, 1}; };
  return r;
}

}  // namespace

TEST_CASE("a composite asks its members by priority and counts each member's steps", "[engine][dispatch][composite]") {
  composite_dispatcher<fake_graph> c;
  std::vector<std::string> log;
  c.add("general", general(), 0).set_runners(runners(log, "general"));
  c.add("spec", spec_decode(), 10).set_runners(runners(log, "spec"));
  REQUIRE(c.size() == 2);
  CHECK(c.name(0) == "spec");
  CHECK(c.name(1) == "general");
  CHECK(c.priority("spec") == 10);

  // Uniform query length 4: the spec member's full graph (exact key).
  auto a = c.run(dispatch_key::uniform_decode(3, 4));
  CHECK(a.member == "spec");
  CHECK(a.result.ran() == dispatch_mode::full);
  CHECK(a.result.route.run_tokens() == 16);
  // A mixed batch of 100 tokens: the spec member's route is eager (above its
  // ladder), so the general member takes it.
  auto b = c.run(dispatch_key::mixed(100, 7));
  CHECK(b.member == "general");
  CHECK(b.result.ran() == dispatch_mode::piecewise);
  // Above every ladder: nobody has a graph; the first member runs it eagerly.
  auto e = c.run(dispatch_key::mixed(1000, 7));
  CHECK(e.member == "spec");
  CHECK(e.result.outcome == dispatch_outcome::eager);

  CHECK(log == std::vector<std::string>{"spec full 16", "general piecewise 104", "spec eager 1000"});
  CHECK(c.selections("spec") == 2);
  CHECK(c.selections("general") == 1);
  CHECK(c.unclaimed() == 1);
  CHECK(c.stats("spec").dispatches(dispatch_mode::full) == 1);
  CHECK(c.stats("spec").dispatches(dispatch_mode::eager) == 1);
  CHECK(c.stats("general").dispatches(dispatch_mode::piecewise) == 1);
  CHECK(c.stats("general").total_dispatches() == 1);  // members not chosen count nothing
  CHECK(c.at("general").cache().stats().misses == 1);
  CHECK(c.at("spec").cache().stats().misses == 1);
}

TEST_CASE("a composite prefers a member whose graph is captured over one that must capture",
          "[engine][dispatch][composite]") {
  composite_dispatcher<fake_graph> c;
  std::vector<std::string> log;
  // Two members that both have piecewise graphs for 104 tokens; the
  // high-priority one cannot capture.
  c.add("high", general(), 5).set_runners(runners(log, "high", false));
  auto& low = c.add("low", general(), 1);
  low.set_runners(runners(log, "low"));

  CHECK(c.run(dispatch_key::mixed(100, 2)).member == "low");  // low captures
  CHECK(c.run(dispatch_key::mixed(100, 2)).result.outcome == dispatch_outcome::replayed);
  // Give "high" the graph: now it wins.
  const graph_key k104(dispatch_mode::piecewise, dispatch_key::for_tokens(104));
  c.at("high").cache().insert(k104, fake_graph{k104}, 1);
  CHECK(c.run(dispatch_key::mixed(100, 2)).member == "high");
  // A shape only declared (no member can capture it there but low): low.
  low.clear_cache();
  CHECK(c.run(dispatch_key::mixed(50, 2)).member == "low");
  CHECK(c.unclaimed() == 0);
}

TEST_CASE("with no member able to get the graph, the first member falls back to eager",
          "[engine][dispatch][composite]") {
  composite_dispatcher<fake_graph> c;
  std::vector<std::string> log;
  c.add("only", general()).set_runners(runners(log, "only", false));
  auto r = c.run(dispatch_key::mixed(100, 2));
  CHECK(r.result.outcome == dispatch_outcome::eager_fallback);
  CHECK(c.unclaimed() == 1);
  CHECK(c.stats("only").eager_fallbacks() == 1);
}

TEST_CASE("decision-only composite dispatch counts at the chosen member", "[engine][dispatch][composite]") {
  composite_dispatcher<fake_graph> c;
  c.add("spec", spec_decode(), 1);
  c.add("general", general(), 0);
  auto d = c.dispatch(dispatch_key::mixed(100, 7));
  CHECK(d.member == "general");
  CHECK(d.decision.needs_capture());
  CHECK(c.stats("general").uncaptured() == 1);
  c.at(d.member).capture_if_missing(d.decision, [](graph_key k, stream_index) {
    return captured_graph<fake_graph>{{k}, 1};
  });
  CHECK(c.stats("general").dispatches(dispatch_mode::piecewise) == 1);
  CHECK(c.stats("general").uncaptured() == 0);
  c.clear_cache();
  CHECK(c.at("general").cache().empty());
}

TEST_CASE("bad composite use gets a clear error", "[engine][dispatch][composite]") {
  composite_dispatcher<fake_graph> c;
  auto none = thrown_by([&] { c.run(dispatch_key::mixed(10, 1)); });
  CHECK(none.code() == errc::invalid_argument);
  CHECK(std::string(none.what()).find("no members") != std::string::npos);
  c.add("a", general());
  CHECK(thrown_by([&] { c.add("a", general()); }).code() == errc::invalid_argument);
  CHECK(thrown_by([&] { c.add("", general()); }).code() == errc::invalid_argument);
  auto missing = thrown_by([&] { c.at("b"); });
  CHECK(std::string(missing.what()).find("'b'") != std::string::npos);
  CHECK(c.find("b") == nullptr);
  CHECK(c.find("a") != nullptr);
  // The chosen member has no runners.
  CHECK(thrown_by([&] { c.run(dispatch_key::mixed(10, 1)); }).code() == errc::invalid_argument);
}
