#include "cobatch/engine/ubatch/ubatch_forward.hpp"

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/coro/sync_wait.hpp"
#include "cobatch/coro/use_task.hpp"
#include "cobatch/engine/ubatch/ubatch_error.hpp"
#include "cobatch/gpu/host/host_device.hpp"
#include "engine_test_support.hpp"
#include "ubatch_fixture.hpp"

#include <catch2/catch.hpp>

#include <stdexcept>
#include <string>
#include <vector>

using namespace cobatch;
using engine::test::owned_batch;
using engine::test::thrown_by;

namespace {

using fixture = test::ubatch_fixture;

// A "layer": output row i = (id_i * 10 + position_i, hidden_i * 2) for each
// real token, computed on the device (the compute stream), with a switch
// between the halves as a real layer would have.
struct toy_layer {
  int calls = 0;
  std::vector<std::string> trace;
  coro::task<std::vector<float>> operator()(engine::ubatch_context& ctx, engine::token_rows<const int> ids,
                                            engine::token_rows<const int> positions,
                                            engine::token_rows<const float> hidden) {
    ++calls;
    trace.push_back("mb" + std::to_string(ctx.index()) + " rows " + std::to_string(ids.num_rows()));
    const auto n = ids.num_rows();
    auto out = std::make_shared<std::vector<float>>(static_cast<std::size_t>(n * 2));
    ctx.current_stream().enqueue([=] {
      for (std::int64_t i = 0; i < n; ++i) (*out)[i * 2] = static_cast<float>(ids.row(i)[0] * 10 + positions.row(i)[0]);
    });
    co_await ctx.switch_to_comm();
    co_await ctx.switch_to_compute();
    ctx.current_stream().enqueue([=] {
      for (std::int64_t i = 0; i < n; ++i) (*out)[i * 2 + 1] = hidden.row(i)[0] * 2.0f;
    });
    co_await ctx.current_stream().async_wait(coro::use_task);
    co_return *out;
  }
};

}  // namespace

TEST_CASE("a wrapped forward slices the inputs, runs the micro-batches and merges in token order",
          "[engine][ubatch][forward]") {
  fixture f;
  const auto batch = owned_batch::with_context({30, 1, 1, 40, 8}, 5);  // 80 tokens
  std::vector<int> ids(80), positions(80);
  std::vector<float> hidden(80);
  for (int i = 0; i < 80; ++i) {
    ids[i] = i;
    positions[i] = i % 7;
    hidden[i] = static_cast<float>(i) / 4.0f;
  }
  engine::ubatch_forward forward(f.scheduler, toy_layer{},
                                 {.num_ubatches = 3, .slicing = {.thresholds = {.prefill_tokens = 1}}, .output_width = 2});
  const auto out = coro::sync_wait(
      f.loop, forward(batch.view(), engine::token_rows<const int>(std::span<const int>(ids)),
                      engine::token_rows<const int>(std::span<const int>(positions)),
                      engine::token_rows<const float>(std::span<const float>(hidden))));
  REQUIRE(out.size() == 160);
  for (int i = 0; i < 80; ++i) {
    CHECK(out[i * 2] == static_cast<float>(i * 10 + i % 7));
    CHECK(out[i * 2 + 1] == hidden[i] * 2.0f);
  }
  CHECK(forward.unwrap().calls == 3);
  CHECK(forward.unwrap().trace == std::vector<std::string>{"mb0 rows 27", "mb1 rows 27", "mb2 rows 26"});
}

TEST_CASE("a wrapped forward pads the last micro-batch and can put decode first", "[engine][ubatch][forward]") {
  fixture f;
  // Prefill first, then decodes: token-balanced cuts give [prefill][decodes].
  std::vector<std::int32_t> q{12};
  for (int i = 0; i < 12; ++i) q.push_back(1);
  const auto batch = owned_batch::with_context(q, 3);  // 24 tokens
  std::vector<int> ids(32);  // covers the padded rows too
  std::vector<std::int32_t> order_seen;
  auto fn = [&](engine::ubatch_context& ctx, engine::token_rows<const int> rows) -> coro::task<std::int64_t> {
    order_seen.push_back(ctx.index());
    co_return rows.num_rows();
  };
  engine::ubatch_forward forward(f.scheduler, fn,
                                 {.num_ubatches = 2,
                                  .slicing = {.thresholds = {.decode_tokens = 1, .prefill_tokens = 1}},
                                  .input_extent = engine::token_extent::padded,
                                  .turns = engine::ubatch_turns::decode_first});
  const auto rows = coro::sync_wait(
      f.loop, forward.padded(batch.view(), 32, engine::token_rows<int>(std::span<int>(ids))));
  // Not vectors: per micro-batch, in micro-batch order; padded extents 16 + 16.
  CHECK(rows == std::vector<std::int64_t>{16, 16});
  CHECK(order_seen == std::vector<std::int32_t>{1, 0});
}

TEST_CASE("a wrapped forward rejects short inputs before running and surfaces micro-batch failures",
          "[engine][ubatch][forward]") {
  fixture f;
  const auto batch = owned_batch::with_context({10, 10}, 0);
  std::vector<int> ids(19);
  int ran = 0;
  auto fn = [&](engine::ubatch_context& ctx, engine::token_rows<const int>) -> coro::task<void> {
    ++ran;
    if (ctx.index() == 1) throw std::runtime_error("layer failed");
    co_await ctx.yield();
  };
  engine::ubatch_forward forward(f.scheduler, fn, {.num_ubatches = 2, .slicing = {.thresholds = {.prefill_tokens = 1}}});
  auto e = thrown_by([&] { coro::sync_wait(f.loop, forward(batch.view(), engine::token_rows<int>(std::span<int>(ids)))); });
  CHECK(e.code() == engine::errc::invalid_argument);
  CHECK(std::string(e.what()).find("input 0 has 19 rows; the batch needs 20") != std::string::npos);
  CHECK(ran == 0);

  ids.resize(20);
  CHECK_THROWS_AS(coro::sync_wait(f.loop, forward(batch.view(), engine::token_rows<int>(std::span<int>(ids)))),
                  engine::ubatch_error);
  CHECK(ran == 2);

  CHECK(thrown_by([&] { engine::ubatch_forward bad(f.scheduler, fn, {.num_ubatches = 0}); }).code() ==
        engine::errc::invalid_argument);
  CHECK(thrown_by([&] { engine::ubatch_forward bad(f.scheduler, fn, {.output_width = 0}); }).code() ==
        engine::errc::invalid_argument);
}

TEST_CASE("a wrapped forward can choose its micro-batch count per call", "[engine][ubatch][forward]") {
  fixture f;
  auto fn = [](engine::ubatch_context& ctx, engine::token_rows<const int>) -> coro::task<std::int32_t> {
    co_return ctx.count();
  };
  engine::ubatch_forward forward(
      f.scheduler, fn,
      {.choose = [](const engine::batch_view& b, std::int32_t) { return b.num_tokens >= 64 ? 4 : 1; },
       .slicing = {.thresholds = {.prefill_tokens = 1}}});
  const auto small = owned_batch::with_context({8, 8}, 0);
  const auto large = owned_batch::with_context({32, 32}, 0);
  std::vector<int> ids(64);
  CHECK(coro::sync_wait(f.loop, forward(small.view(), engine::token_rows<int>(std::span<int>(ids)))) ==
        std::vector<std::int32_t>{1});
  CHECK(coro::sync_wait(f.loop, forward(large.view(), engine::token_rows<int>(std::span<int>(ids)))) ==
        std::vector<std::int32_t>{4, 4, 4, 4});
}
