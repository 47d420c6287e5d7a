// Bad input to plan and run: each gets an engine_error naming the value, with
// nothing enqueued; a failing rank ends every rank's run with an error.
#include <cobatch/engine/attention/attention_plan.hpp>

#include "attention_harness.hpp"
#include "engine_test_support.hpp"

#include <asio/error.hpp>
#include <catch2/catch.hpp>

#include <atomic>
#include <random>
#include <stdexcept>

using namespace cobatch;
using namespace cobatch::engine;
using namespace cobatch::engine::test;

namespace {

struct small_batch {
  kv_cache_config cache{2, 16, 4, 2, 64, gpu::data_type::f32};
  attention_config config{4, 0.125f, {}, dcp_merge::all_gather};
  // Two requests: a decode over 6 tokens (2 pages) and a prefill of 3 (1 page).
  std::vector<std::int32_t> qsl{0, 1, 4};
  std::vector<std::int32_t> seq{6, 3};
  std::vector<std::int32_t> indptr{0, 2, 3};
  std::vector<std::int32_t> indices{5, 9, 2};
  attention_batch batch() const { return {{qsl, seq, qsl.back()}, page_table_view(indptr, indices)}; }
};

engine_error plan_error(const small_batch& b) {
  attention_plan plan;
  auto e = thrown_by([&] { plan_attention(b.cache, b.config, b.batch(), plan); });
  CHECK_FALSE(plan.planned());
  std::error_code ec;
  plan_attention(b.cache, b.config, b.batch(), plan, ec);
  CHECK(ec == e.code());
  return e;
}

}  // namespace

TEST_CASE("plan_attention accepts a good batch and sizes its buffers", "[engine][attention][plan]") {
  small_batch b;
  attention_plan plan;
  plan_attention(b.cache, b.config, b.batch(), plan);
  CHECK(plan.planned());
  CHECK(plan.num_tokens() == 4);
  CHECK(plan.output_elements() == 4u * 4 * 64);
  CHECK(plan.lse_elements() == 16u);
  CHECK(plan.local_kv_tokens() == 9);
  CHECK(plan.appended_tokens() == 4);
  CHECK(plan.requests()[0].page_begin == 0);
  CHECK(plan.requests()[1].page_begin == 2);
  CHECK(plan.requests()[1].kv_len == 3);
  CHECK(plan.work_is_identity());
  CHECK(plan.num_work_items() == 2);
  CHECK(plan.workspace().total > 0);
  const auto first = plan.id();
  plan_attention(b.cache, b.config, b.batch(), plan);
  CHECK(plan.id() != first);
}

TEST_CASE("plan_attention names every bad value", "[engine][attention][plan]") {
  SECTION("page index out of range") {
    small_batch b;
    b.indices[1] = 16;
    const auto e = plan_error(b);
    CHECK(e.code() == errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("request 0's page 1 is 16"));
  }
  SECTION("negative page index") {
    small_batch b;
    b.indices[2] = -1;
    CHECK_THAT(plan_error(b).what(), Catch::Contains("request 1's page 0 is -1"));
  }
  SECTION("KV length shorter than the query") {
    small_batch b;
    b.seq[1] = 2;
    const auto e = plan_error(b);
    CHECK(e.code() == errc::length_mismatch);
    CHECK_THAT(e.what(), Catch::Contains("seq_lens[1]=2"));
  }
  SECTION("heads that do not divide") {
    small_batch b;
    b.config.num_qo_heads = 3;
    const auto e = plan_error(b);
    CHECK(e.code() == errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("num_qo_heads=3 is not a multiple of num_kv_heads=2"));
  }
  SECTION("heads that the reduce-scatter merge cannot split") {
    small_batch b;
    b.config.dcp = {3, 0, 1};
    b.config.merge = dcp_merge::lse_all_gather_reduce_scatter;
    b.indptr = {0, 1, 2};
    b.indices = {1, 2};
    CHECK_THAT(plan_error(b).what(), Catch::Contains("not divisible by dcp world=3"));
  }
  SECTION("page count that does not match the shard") {
    small_batch b;
    b.indptr = {0, 1, 2};
    const auto e = plan_error(b);
    CHECK(e.code() == errc::length_mismatch);
    CHECK_THAT(e.what(), Catch::Contains("request 0 has 1 pages"));
  }
  SECTION("page table of another batch size") {
    small_batch b;
    b.indptr = {0, 2};
    CHECK(plan_error(b).code() == errc::length_mismatch);
  }
  SECTION("DCP rank outside the world") {
    small_batch b;
    b.config.dcp = {2, 2, 1};
    CHECK_THAT(plan_error(b).what(), Catch::Contains("dcp rank=2 is outside [0, world=2)"));
  }
  SECTION("softmax scale") {
    small_batch b;
    b.config.softmax_scale = std::numeric_limits<float>::quiet_NaN();
    CHECK(plan_error(b).code() == errc::invalid_argument);
  }
  SECTION("head dim") {
    small_batch b;
    b.cache.head_dim = 96;
    CHECK_THAT(plan_error(b).what(), Catch::Contains("head_dim=96"));
  }
  SECTION("storage type") {
    small_batch b;
    b.cache.storage = gpu::data_type::i32;
    CHECK(plan_error(b).code() == errc::unknown_mode);
  }
  SECTION("merge outside the enum") {
    small_batch b;
    b.config.merge = static_cast<dcp_merge>(7);
    CHECK(plan_error(b).code() == errc::unknown_mode);
  }
  SECTION("indptr that decreases") {
    small_batch b;
    b.seq = {0, 3};
    b.qsl = {0, 0, 3};
    b.indptr = {0, 0, -1};
    const auto e = plan_error(b);
    CHECK(e.code() == errc::length_mismatch);
    CHECK_THAT(e.what(), Catch::Contains("indptr[2]=-1 is less than indptr[1]=0"));
  }
  SECTION("query offsets whose difference overflows int32") {
    // loc[1] - loc[0] and loc[3] - loc[2] fit, loc[2] - loc[1] wraps to a
    // positive number: the offsets decrease all the same.
    small_batch b;
    b.qsl = {0, 2147483647, -2, 4};
    b.seq = {2147483647, 2147483647, 6};
    b.indptr = {0, 2, 3, 4};
    b.indices = {5, 9, 2, 3};
    const auto e = plan_error(b);
    CHECK(e.code() == errc::negative_length);
    CHECK_THAT(e.what(), Catch::Contains("query_start_loc[2]=-2 is less than query_start_loc[1]=2147483647"));
  }
  SECTION("page count that does not match, with a page size that is not a power of two") {
    small_batch b;
    b.cache.page_size = 3;
    b.indptr = {0, 2, 3};  // 6 tokens need 2 pages of 3, and 3 tokens 1: right
    attention_plan plan;
    plan_attention(b.cache, b.config, b.batch(), plan);
    CHECK(plan.local_kv_tokens() == 9);
    b.seq[0] = 7;  // now 3 pages
    const auto e = plan_error(b);
    CHECK(e.code() == errc::length_mismatch);
    CHECK_THAT(e.what(), Catch::Contains("request 0 has 2 pages; its shard of seq_len=7"));
    CHECK_THAT(e.what(), Catch::Contains("which need 3 pages of 3"));
  }
  SECTION("indptr running past the indices") {
    small_batch b;
    b.indices.pop_back();
    CHECK_THAT(plan_error(b).what(), Catch::Contains("runs past its 2 indices"));
  }
}

TEST_CASE("page_table checks indices as they are added; page_pool hands out and takes back", "[engine][attention]") {
  page_table t(8);
  std::vector<std::int32_t> good{1, 7}, bad{3, 8};
  t.add_request(good);
  CHECK_THAT(thrown_by([&] { t.add_request(bad); }).what(), Catch::Contains("page 1 is 8"));
  CHECK(t.num_reqs() == 1);
  CHECK(t.view().checked_num_pages() == 8);
  page_pool pool(4);
  std::vector<std::int32_t> got;
  pool.allocate(3, got);
  CHECK(pool.available() == 1);
  CHECK(thrown_by([&] { pool.allocate(2, got); }).code() == errc::no_capacity);
  std::vector<std::int32_t> twice{got[0], got[0]};
  CHECK_THAT(thrown_by([&] { pool.release(twice); }).what(), Catch::Contains("is not in use"));
  CHECK(pool.available() == 1);
  pool.release(got);
  CHECK(pool.available() == 4);
}

TEST_CASE("run rejects a plan or tensors that do not match, enqueuing nothing", "[engine][attention]") {
  attention_env env;
  small_batch b;
  paged_kv_cache cache(env.dev, b.cache);
  batch_attention attn(env.dev, cache, b.config);
  attention_plan plan;
  attn.plan(b.batch(), plan);
  auto q = gpu::typed_buffer<float>(env.dev, 4 * 4 * 64);
  auto out = gpu::typed_buffer<float>(env.dev, 4 * 4 * 64);
  auto lse = gpu::typed_buffer<float>(env.dev, 16);
  auto small = gpu::typed_buffer<float>(env.dev, 15);
  auto halves = gpu::typed_buffer<gpu::bf16>(env.dev, 4 * 4 * 64);
  auto s = env.dev.make_stream();
  // A stream that counts what reaches it: nothing may.
  std::atomic<int> ran{0};
  attention_io good{0, q.span(), {}, {}, out.span(), lse_ref::base_e(lse.span())};
  auto expect = [&](attention_io io, errc code, const char* text, const attention_plan& p) {
    const auto e = thrown_by([&] { attn.enqueue_run(p, io, s, s); });
    CHECK(e.code() == code);
    CHECK_THAT(e.what(), Catch::Contains(text));
  };
  attention_io io = good;
  io.out = gpu::device_span<float>(out.data(), out.size() - 1, out.backend());
  expect(io, errc::length_mismatch, "out holds 1023 elements; the plan needs 1024", plan);
  io = good;
  io.lse = lse_ref::base_2(small.span());
  expect(io, errc::length_mismatch, "lse holds 15 elements", plan);
  io = good;
  io.q = halves.span();
  expect(io, errc::invalid_argument, "q holds bf16 elements; the cache stores f32", plan);
  io = good;
  io.layer = 2;
  expect(io, errc::invalid_argument, "layer=2 is outside [0, 2)", plan);
  io = good;
  io.new_k = q.span();
  expect(io, errc::invalid_argument, "give both or neither", plan);
  attention_plan never;
  expect(good, errc::invalid_argument, "never planned", never);
  // A plan made for another batch size: q and out sized for 3 tokens.
  small_batch other;
  other.qsl = {0, 1, 3};
  other.seq = {6, 2};
  attention_plan plan3;
  attn.plan(other.batch(), plan3);
  expect(good, errc::length_mismatch, "q holds 1024 elements; the plan needs 768", plan3);
  // A plan made for another DCP rank.
  attention_config rank1 = b.config;
  rank1.dcp = {2, 1, 1};
  b.indptr = {0, 1, 2};
  b.indices = {3, 4};
  attention_plan plan_r1;
  plan_attention(b.cache, rank1, b.batch(), plan_r1);
  expect(good, errc::invalid_argument, "made for dcp rank 1 of world 2", plan_r1);
  // Nothing reached the stream.
  s.enqueue([&] { ran = 1; });
  REQUIRE_FALSE(env.wait({s})[0]);
  CHECK(ran == 1);
  CHECK(attn.stats().runs == 0);
  CHECK(attn.stats().uploads == 0);
  CHECK(attn.stats().query_tokens == 0);
  // Mismatched communicator.
  auto comms = gpu::host::make_communicators(2);
  attention_config world2 = b.config;
  world2.dcp = {2, 0, 1};
  CHECK_THAT(thrown_by([&] { batch_attention(env.dev, cache, world2, &comms[1]); }).what(),
             Catch::Contains("communicator is rank 1 of 2; the config says dcp rank 0 of world 2"));
  CHECK_THAT(thrown_by([&] { batch_attention(env.dev, cache, world2, nullptr); }).what(),
             Catch::Contains("needs a communicator"));
}

TEST_CASE("a failing rank ends every rank's run with an error, no rank hangs", "[engine][attention][dcp]") {
  attention_env env;
  std::mt19937 rng(77);
  problem p = random_problem(rng);
  for (const dcp_merge merge : {dcp_merge::all_gather, dcp_merge::lse_all_gather_reduce_scatter}) {
    group_options g;
    g.world = 3;
    g.merge = merge;
    problem q = p;
    // Heads divisible by 3 for the reduce-scatter merge.
    q.group = 3;
    q.q.assign(static_cast<std::size_t>(q.tokens()) * q.heads() * q.head_dim, 0.25f);
    // A generous timeout: the run must end through the abort, not the timeout.
    auto comms = gpu::host::make_communicators(3, gpu::communicator_options{std::chrono::seconds(60)});
    std::vector<rank_state> ranks(3);
    for (std::int32_t r = 0; r < 3; ++r) setup_rank(env, q, g, r, ranks[static_cast<std::size_t>(r)], rng, &comms[static_cast<std::size_t>(r)]);
    // Rank 2's compute stream fails before its run: its collectives never
    // start, and its peers would wait for them.
    ranks[2].compute.enqueue([] { throw std::runtime_error("injected device fault"); });
    std::vector<std::error_code> results(3);
    int done = 0;
    for (std::int32_t r = 0; r < 3; ++r) {
      auto& rs = ranks[static_cast<std::size_t>(r)];
      rs.attn->plan({q.batch(), rs.table.view()}, rs.plan);
      rs.attn->async_run(rs.plan, io_of(q, rs, g, 0), rs.compute, rs.comm, [&, r](std::error_code ec) {
        results[static_cast<std::size_t>(r)] = ec;
        if (++done == 3) env.loop.stop();
      });
    }
    while (done < 3) {
      env.loop.restart();
      env.loop.run();
    }
    INFO("merge " << name_of(merge));
    CHECK(results[2]);
    CHECK(results[0] == gpu::errc::communicator_aborted);
    CHECK(results[1] == gpu::errc::communicator_aborted);
    std::vector<gpu::stream_ref> all;
    for (auto& rs : ranks) {
      all.push_back(rs.compute);
      all.push_back(rs.comm);
    }
    env.wait(all);  // every stream drains: nothing is stuck in a collective
  }
}
