#include <cobatch/engine/step/engine_loop.hpp>

#include "engine_rig.hpp"
#include "engine_test_support.hpp"
#include "toy_step_model.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <random>

using namespace cobatch;
using namespace cobatch::engine;
using namespace cobatch::engine::test;

namespace {

constexpr std::int32_t vocab = 64;
constexpr std::int32_t context = 128;

std::vector<generation_request> random_requests(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<generation_request> out;
  for (std::size_t i = 0; i < n; ++i) {
    generation_request r;
    const auto len = static_cast<std::int32_t>(1 + rng() % 40);
    for (std::int32_t t = 0; t < len; ++t) r.prompt.push_back(static_cast<std::int32_t>(rng() % vocab));
    r.max_tokens = static_cast<std::int32_t>(1 + rng() % 24);
    if (rng() % 2) r.sampling = {.temperature = 0.8f, .top_p = 0.9f, .seed = rng()};
    out.push_back(std::move(r));
  }
  return out;
}

engine_options small_options(std::int32_t pages, std::int32_t budget) {
  engine_options o;
  o.planner.max_running = 32;
  o.planner.num_pages = pages;
  o.planner.page_size = 4;
  o.planner.slicing.thresholds = {.decode_tokens = 4, .prefill_tokens = 8};
  o.planner.ubatches = {1, 2};
  o.fixed_budget = budget;
  o.graph_max_tokens = 64;
  return o;
}

}  // namespace

TEST_CASE("engine_loop: 1000 seeded requests through a small pool all finish, in order, with unpreempted tokens",
          "[engine][step][admission]") {
  const auto requests = random_requests(std::getenv("N") ? std::atoi(std::getenv("N")) : 1000, 7);
  std::int64_t need = 0;
  for (const auto& r : requests) need += kv_pages_for(std::int64_t(r.prompt.size()) + r.max_tokens, 4, 1);

  auto run = [&](std::int32_t pages, step_overlap overlap, std::vector<request_id>* admitted, std::uint64_t* preemptions,
                 std::int32_t* high_water) {
    host_rig rig;
    toy_step_model model(vocab, context, pages, 4);
    engine_rank rank{&rig.device, &model};
    engine_options o = small_options(pages, 48);
    o.overlap = overlap;
    engine_loop engine(rig.loop.get_executor(), {&rank, 1}, o);
    bool pool_ok = true;
    engine.on_step([&](const step_report& r) {
      if (admitted) admitted->insert(admitted->end(), r.plan->admitted.begin(), r.plan->admitted.end());
      pool_ok = pool_ok && (engine.planner().pages().num_pages() - engine.planner().pages().available()) <= pages;
    });
    auto out = run_all(rig.loop, engine, requests);
    CHECK(pool_ok);
    if (preemptions) *preemptions = engine.gauges().preemptions;
    if (high_water) *high_water = engine.planner().pages_high_water();
    return out;
  };

  std::vector<request_id> admitted;
  std::uint64_t preemptions = 0;
  std::int32_t high_water = 0;
  const std::int32_t small_pool = 24;  // far below the total need
  REQUIRE(need > 2 * small_pool);
  const auto tight = run(small_pool, step_overlap::overlapped, &admitted, &preemptions, &high_water);
  const auto roomy = run(4096, step_overlap::sequential, nullptr, nullptr, nullptr);

  CHECK(preemptions > 0);
  CHECK(high_water <= small_pool);
  REQUIRE(tight.size() == requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    INFO("request " << i);
    REQUIRE((tight[i].finish == finish_reason::length || tight[i].finish == finish_reason::stop));
    CHECK(tight[i].tokens.size() == static_cast<std::size_t>(requests[i].max_tokens));
    CHECK(tight[i].tokens == roomy[i].tokens);
  }
  // Admission in arrival order: ids were given in submission order.
  REQUIRE(admitted.size() == requests.size());
  CHECK(std::is_sorted(admitted.begin(), admitted.end()));
}

TEST_CASE("engine_loop: stop tokens, cancellation, and refusals with reasons while others carry on", "[engine][step]") {
  host_rig rig;
  toy_step_model model(vocab, context, 64, 4);
  engine_rank rank{&rig.device, &model};
  engine_loop engine(rig.loop.get_executor(), {&rank, 1}, small_options(64, 32));

  std::vector<generation_request> requests(6);
  requests[0].prompt = {1, 2, 3};
  requests[0].max_tokens = 10;
  requests[1].prompt = std::vector<std::int32_t>(context, 5);  // longer than the context with max_tokens
  requests[2].prompt = {1};
  requests[2].sampling.top_p = 0.0f;  // bad sampling value
  requests[3].prompt = {1};
  requests[3].sampling.temperature = -1.0f;
  requests[4].prompt = {70};  // outside the vocabulary
  requests[5].prompt = {4, 5};
  requests[5].max_tokens = 6;
  // First run request 0 alone to learn a token to stop on.
  const auto probe = run_all(rig.loop, engine, {requests[0]});
  REQUIRE(probe[0].tokens.size() == 10);

  host_rig rig2;
  toy_step_model model2(vocab, context, 64, 4);
  engine_rank rank2{&rig2.device, &model2};
  engine_loop engine2(rig2.loop.get_executor(), {&rank2, 1}, small_options(64, 32));
  requests[0].stop_tokens = {probe[0].tokens[3]};
  const auto out = run_all(rig2.loop, engine2, requests);
  CHECK(out[0].finish == finish_reason::stop);
  CHECK(out[0].tokens.back() == probe[0].tokens[3]);
  CHECK(out[0].tokens.size() <= 4);
  CHECK(out[1].finish == finish_reason::refused);
  CHECK(out[1].error == make_error_code(errc::overflow));
  CHECK_THAT(out[1].detail, Catch::Contains("exceeds the context"));
  CHECK(out[2].finish == finish_reason::refused);
  CHECK_THAT(out[2].detail, Catch::Contains("top_p"));
  CHECK(out[3].finish == finish_reason::refused);
  CHECK_THAT(out[3].detail, Catch::Contains("temperature"));
  CHECK(out[4].finish == finish_reason::refused);
  CHECK_THAT(out[4].detail, Catch::Contains("vocabulary"));
  CHECK(out[5].finish == finish_reason::length);
  CHECK(out[5].tokens.size() == 6);
  CHECK(engine2.gauges().refused == 4);
}

TEST_CASE("engine_loop: a request needing more pages than the pool is refused, the others run", "[engine][step]") {
  host_rig rig;
  toy_step_model model(vocab, context, 4, 4);
  engine_rank rank{&rig.device, &model};
  engine_loop engine(rig.loop.get_executor(), {&rank, 1}, small_options(4, 16));
  generation_request big{.prompt = std::vector<std::int32_t>(20, 1), .max_tokens = 4};
  generation_request fits{.prompt = {1, 2}, .max_tokens = 3};
  const auto out = run_all(rig.loop, engine, {big, fits});
  CHECK(out[0].finish == finish_reason::refused);
  CHECK(out[0].error == make_error_code(errc::no_capacity));
  CHECK_THAT(out[0].detail, Catch::Contains("the pool holds 4"));
  CHECK(out[1].finish == finish_reason::length);
}

TEST_CASE("engine_loop: bad configuration is an error naming the value", "[engine][step]") {
  host_rig rig;
  toy_step_model model(vocab, context, 8, 4);
  engine_rank rank{&rig.device, &model};
  for (std::int32_t budget : {0, -5}) {
    auto e = thrown_by([&] { engine_loop(rig.loop.get_executor(), {&rank, 1}, small_options(8, budget)); });
    CHECK(e.code() == make_error_code(errc::invalid_argument));
    CHECK_THAT(e.what(), Catch::Contains("fixed_budget " + std::to_string(budget)));
  }
  engine_options o = small_options(8, 16);
  o.planner.num_pages = 0;
  CHECK_THAT(thrown_by([&] { engine_loop(rig.loop.get_executor(), {&rank, 1}, o); }).what(), Catch::Contains("num_pages 0"));
  engine_rank none{};
  CHECK_THAT(thrown_by([&] { engine_loop(rig.loop.get_executor(), {&none, 1}, small_options(8, 16)); }).what(),
             Catch::Contains("rank 0 has no device"));
}

TEST_CASE("engine_loop: overlapped and sequential loops, graphs and eager, give the same tokens", "[engine][step]") {
  const auto requests = random_requests(40, 3);
  std::vector<std::vector<outcome>> results;
  for (int variant = 0; variant < 4; ++variant) {
    host_rig rig;
    toy_step_model model(vocab, context, 512, 4, variant % 2 == 0 ? 1 : 3);
    engine_rank rank{&rig.device, &model};
    engine_options o = small_options(512, 40);
    o.overlap = variant < 2 ? step_overlap::overlapped : step_overlap::sequential;
    if (variant == 3) o.graph_max_tokens = 0;
    engine_loop engine(rig.loop.get_executor(), {&rank, 1}, o);
    results.push_back(run_all(rig.loop, engine, requests));
    if (o.graph_max_tokens > 0) {
      CHECK(engine.runner(0).stats().graph_replays > 0);
      CHECK(engine.runner(0).stats().graph_captures > 0);
    } else {
      CHECK(engine.runner(0).stats().graph_replays == 0);
    }
  }
  for (std::size_t v = 1; v < results.size(); ++v)
    for (std::size_t i = 0; i < requests.size(); ++i) CHECK(results[v][i].tokens == results[0][i].tokens);
}

TEST_CASE("engine_loop: a failing micro-batch or collective fails its step with an error naming it; the next runs",
          "[engine][step][failure]") {
  const auto requests = random_requests(12, 11);
  host_rig ref_rig;
  toy_step_model ref_model(vocab, context, 256, 4, 2);
  engine_rank ref_rank{&ref_rig.device, &ref_model};
  engine_loop ref(ref_rig.loop.get_executor(), {&ref_rank, 1}, small_options(256, 24));
  const auto expected = run_all(ref_rig.loop, ref, requests);

  for (bool collective : {false, true}) {
    INFO((collective ? "collective" : "micro-batch"));
    host_rig rig;
    toy_step_model model(vocab, context, 256, 4, 2);
    engine_rank rank{&rig.device, &model};
    engine_loop engine(rig.loop.get_executor(), {&rank, 1}, small_options(256, 24));
    int steps = 0;
    engine.on_step([&](const step_report&) {
      if (++steps == 3) (collective ? model.fail_collective : model.fail_next_segment).store(true);
    });
    const auto out = run_all(rig.loop, engine, requests);
    CHECK(engine.gauges().failed_steps == 1);
    CHECK(model.recoveries == 1);
    if (collective) {
      CHECK_THAT(engine.last_error(), Catch::Contains("the collective at stage 1 of micro-batch"));
      CHECK_THAT(engine.last_error(), Catch::Contains("failed on purpose") || Catch::Contains("failed"));
    } else {
      CHECK_THAT(engine.last_error(), Catch::Contains("micro-batch"));
      CHECK_THAT(engine.last_error(), Catch::Contains("stage 0 failed on purpose"));
    }
    // Retried once: every request still ends with the tokens it gets unharmed.
    for (std::size_t i = 0; i < requests.size(); ++i) {
      CHECK(out[i].finish == finish_reason::length);
      CHECK(out[i].tokens == expected[i].tokens);
    }
  }
}

TEST_CASE("engine_loop: cancel frees the request's pages and ends it as cancelled", "[engine][step]") {
  host_rig rig;
  toy_step_model model(vocab, context, 64, 4);
  engine_rank rank{&rig.device, &model};
  engine_loop engine(rig.loop.get_executor(), {&rank, 1}, small_options(64, 16));
  request_stream a = engine.submit({.prompt = {1, 2, 3}, .max_tokens = 100});
  request_stream b = engine.submit({.prompt = {3}, .max_tokens = 5});
  std::vector<outcome> out(2);
  auto consumer = [&]() -> coro::task<void> {
    auto [ec, first] = co_await a.async_next(coro::as_tuple_task);
    CHECK(!ec);
    out[0].tokens = first.tokens;
    a.cancel();
    while (true) {
      auto [e2, chunk] = co_await a.async_next(coro::as_tuple_task);
      if (e2) break;
      if (chunk.last()) {
        out[0].finish = chunk.finish;
        break;
      }
    }
    while (true) {
      auto [e3, chunk] = co_await b.async_next(coro::as_tuple_task);
      if (e3) break;
      out[1].tokens.insert(out[1].tokens.end(), chunk.tokens.begin(), chunk.tokens.end());
      if (chunk.last()) {
        out[1].finish = chunk.finish;
        break;
      }
    }
    auto [e4, after] = co_await a.async_next(coro::as_tuple_task);
    CHECK(e4 == asio::error::eof);
    engine.stop();
  };
  coro::sync_wait(rig.loop, coro::when_all(engine.run(), consumer()));
  CHECK(out[0].finish == finish_reason::cancelled);
  CHECK(out[1].finish == finish_reason::length);
  CHECK(engine.gauges().kv_pages_in_use == 0);
}
