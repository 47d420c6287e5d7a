#include <cobatch/engine/attention/kv_handoff.hpp>

#include "attention_harness.hpp"
#include "engine_test_support.hpp"

#include <catch2/catch.hpp>

#include <random>

using namespace cobatch;
using namespace cobatch::engine;
using namespace cobatch::engine::test;

namespace {

// The prefill step of `base`'s requests (every token new, no prefix) and the
// decode step after it (one new token each, the prefill's tokens as prefix).
void make_steps(std::mt19937& rng, problem& prefill, problem& decode) {
  problem_options o;
  o.max_reqs = 5;
  o.max_prefill = 40;
  o.kv_heads = {2};
  o.groups = {3};
  o.head_dims = {64};
  o.page_sizes = {4};
  prefill = random_problem(rng, o);
  // Fresh prefills only: prefix 0.
  prefill.qsl = {0};
  for (std::size_t i = 0; i < prefill.q_lens.size(); ++i) {
    prefill.q_lens[i] = prefill.seq_lens[i];
    prefill.qsl.push_back(prefill.qsl.back() + prefill.q_lens[i]);
  }
  std::uniform_real_distribution<float> val(-1.0f, 1.0f);
  prefill.q.resize(static_cast<std::size_t>(prefill.tokens()) * prefill.heads() * prefill.head_dim);
  for (float& x : prefill.q) x = val(rng);
  decode = prefill;
  decode.qsl = {0};
  for (std::size_t i = 0; i < decode.q_lens.size(); ++i) {
    decode.q_lens[i] = 1;
    decode.seq_lens[i] += 1;
    decode.qsl.push_back(decode.qsl.back() + 1);
    for (std::size_t e = 0; e < decode.row(); ++e) {
      decode.k[i].push_back(val(rng));
      decode.v[i].push_back(val(rng));
    }
  }
  decode.q.resize(static_cast<std::size_t>(decode.tokens()) * decode.heads() * decode.head_dim);
  for (float& x : decode.q) x = val(rng);
}

}  // namespace

TEST_CASE("prefill on one group, hand-off, decode with DCP on another equals decoding in place",
          "[engine][attention][handoff]") {
  attention_env env;
  for (std::uint32_t seed = 1; seed <= 6; ++seed) {
    std::mt19937 rng(seed);
    problem prefill, decode;
    make_steps(rng, prefill, decode);
    const std::int32_t layers = 2;

    // Prefill group: 2 ranks, interleave 2; the run appends every token.
    group_options pg;
    pg.world = 2;
    pg.interleave = 2;
    pg.num_layers = layers;
    auto pcomm = gpu::host::make_communicators(2);
    std::vector<rank_state> pre(2);
    for (std::int32_t r = 0; r < 2; ++r) setup_rank(env, prefill, pg, r, pre[static_cast<std::size_t>(r)], rng, &pcomm[static_cast<std::size_t>(r)]);
    std::vector<gpu::stream_ref> streams;
    for (std::int32_t l = 0; l < layers; ++l) {
      for (auto& rs : pre) {
        if (l == 0) rs.attn->plan({prefill.batch(), rs.table.view()}, rs.plan);
        rs.attn->enqueue_run(rs.plan, io_of(prefill, rs, pg, l), rs.compute, rs.comm);
      }
    }
    for (auto& rs : pre) {
      streams.push_back(rs.compute);
      streams.push_back(rs.comm);
    }
    for (auto ec : env.wait(streams)) REQUIRE_FALSE(ec);

    // Decode group: 3 ranks, interleave 1, pages for the prefix plus the new
    // token, empty until the hand-off fills them.
    group_options dg;
    dg.world = 3;
    dg.interleave = 1;
    dg.num_layers = layers;
    dg.fill_prefix = false;
    auto dcomm = gpu::host::make_communicators(3);
    std::vector<rank_state> dec(3);
    for (std::int32_t r = 0; r < 3; ++r) setup_rank(env, decode, dg, r, dec[static_cast<std::size_t>(r)], rng, &dcomm[static_cast<std::size_t>(r)]);

    // Hand-off over a 5-rank communicator: prefill ranks 0-1, decode 2-4.
    auto hcomm = gpu::host::make_communicators(5);
    kv_handoff_config hc{0, {2, 0, 2}, 2, {3, 0, 1}};
    std::vector<std::unique_ptr<kv_handoff>> moves;
    std::vector<gpu::stream> copy_streams;
    std::vector<page_table> prefix_tables;
    for (std::int32_t r = 0; r < 5; ++r) {
      const bool sender = r < 2;
      auto& rs = sender ? pre[static_cast<std::size_t>(r)] : dec[static_cast<std::size_t>(r - 2)];
      moves.push_back(std::make_unique<kv_handoff>(env.dev, *rs.cache, hcomm[static_cast<std::size_t>(r)], hc));
      CHECK(moves.back()->my_role() == (sender ? kv_handoff::role::prefill : kv_handoff::role::decode));
      if (sender) {
        moves.back()->plan(prefill.seq_lens, rs.table.view());
      } else {
        // The receiver's pages for the prefix: the first ones of each request.
        dcp_layout me{3, r - 2, 1};
        page_table t(rs.cache->config().num_pages);
        for (std::size_t i = 0; i < rs.pages.size(); ++i) {
          const auto n = page_pool::pages_for(me.local_length(prefill.seq_lens[i]), prefill.page_size);
          t.add_request(std::span(rs.pages[i]).first(static_cast<std::size_t>(n)));
        }
        moves.back()->plan(prefill.seq_lens, t.view());
        prefix_tables.push_back(std::move(t));
      }
      copy_streams.push_back(env.dev.make_stream());
    }
    std::vector<std::error_code> results(5);
    int done = 0;
    for (std::size_t r = 0; r < 5; ++r) {
      moves[r]->async_transfer(copy_streams[r], [&, r](std::error_code ec) {
        results[r] = ec;
        if (++done == 5) env.loop.stop();
      });
    }
    while (done < 5) {
      env.loop.restart();
      env.loop.run();
    }
    for (auto ec : results) REQUIRE_FALSE(ec);
    std::int64_t sent = moves[0]->bytes_moved() + moves[1]->bytes_moved();
    std::int64_t got = moves[2]->bytes_moved() + moves[3]->bytes_moved() + moves[4]->bytes_moved();
    CHECK(sent == got);
    std::int64_t tokens = 0;
    for (auto s : prefill.seq_lens) tokens += s;
    CHECK(sent == tokens * layers * 2 * static_cast<std::int64_t>(prefill.row()) * 4);

    // Decode on the decode group, after the copies (the copy streams joined).
    streams.clear();
    for (std::size_t r = 0; r < 3; ++r) {
      auto& rs = dec[r];
      auto e = env.dev.make_event();
      copy_streams[r + 2].record(e);
      rs.compute.wait(e);
      for (std::int32_t l = 0; l < layers; ++l) {
        if (l == 0) rs.attn->plan({decode.batch(), rs.table.view()}, rs.plan);
        rs.attn->enqueue_run(rs.plan, io_of(decode, rs, dg, l), rs.compute, rs.comm);
      }
      streams.push_back(rs.compute);
      streams.push_back(rs.comm);
    }
    for (auto ec : env.wait(streams)) REQUIRE_FALSE(ec);
    group_run handed;
    collect_outputs(decode, dg, dec, handed);

    // Decoding in place: one rank that holds everything.
    group_options one;
    one.num_layers = layers;
    const group_run in_place = run_group(env, decode, one, seed + 99);
    INFO("seed " << seed);
    CHECK(max_rel_error(handed.out, in_place.out, static_cast<std::size_t>(decode.head_dim)) <= 1e-5);
  }
}

TEST_CASE("kv_handoff rejects groups that do not fit and plans that do not match", "[engine][attention][handoff]") {
  attention_env env;
  kv_cache_config cc{1, 8, 4, 1, 64, gpu::data_type::f32};
  paged_kv_cache cache(env.dev, cc);
  auto comms = gpu::host::make_communicators(3);
  CHECK_THAT(thrown_by([&] { kv_handoff(env.dev, cache, comms[0], {0, {2, 0, 1}, 1, {2, 0, 1}}); }).what(),
             Catch::Contains("overlap"));
  CHECK_THAT(thrown_by([&] { kv_handoff(env.dev, cache, comms[0], {0, {2, 0, 1}, 2, {2, 0, 1}}); }).what(),
             Catch::Contains("do not fit a communicator of 3 ranks"));
  kv_handoff h(env.dev, cache, comms[0], {0, {1, 0, 1}, 1, {2, 0, 1}});
  std::vector<std::int32_t> seq{9}, indptr{0, 2}, indices{0, 1};
  CHECK_THAT(thrown_by([&] { h.plan(seq, page_table_view(indptr, indices)); }).what(),
             Catch::Contains("request 0 has 2 pages on this rank; its shard of 9 tokens holds 9, which need 3"));
  auto s = env.dev.make_stream();
  CHECK(thrown_by([&] { h.enqueue_transfer(s); }).code() == errc::invalid_argument);
}
