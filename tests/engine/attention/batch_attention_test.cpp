#include <cobatch/engine/attention/batch_attention.hpp>

#include "attention_harness.hpp"
#include "engine_test_support.hpp"

#include <catch2/catch.hpp>

#include <random>
#include <sstream>

using namespace cobatch;
using namespace cobatch::engine;
using namespace cobatch::engine::test;

TEST_CASE("batch attention matches a float64 reference on random ragged batches", "[engine][attention]") {
  attention_env env;
  for (std::uint32_t seed = 1; seed <= 40; ++seed) {
    std::mt19937 rng(seed);
    problem p = random_problem(rng);
    group_options g;
    // Half the cases split long contexts into small chunks (merged by the
    // chunk merge), half take the plan's own chunk size.
    g.kv_chunk_pages = seed % 2 == 0 ? 1 : 0;
    g.num_layers = 1 + static_cast<std::int32_t>(seed % 3);
    g.base = seed % 4 == 3 ? lse_base::two : lse_base::e;
    const reference_result want = reference(p);
    const group_run got = run_group(env, p, g, seed);
    INFO("seed " << seed << " reqs " << p.reqs() << " tokens " << p.tokens() << " heads " << p.heads() << "/"
                 << p.kv_heads << " d " << p.head_dim << " page " << p.page_size);
    for (const auto& ec : got.errors) REQUIRE_FALSE(ec);
    CHECK(max_rel_error(got.out, want.out, static_cast<std::size_t>(p.head_dim)) <= 1e-5);
    CHECK(max_lse_error(got.lse, want.lse) <= 1e-5);
    CHECK(got.stats0.runs == static_cast<std::uint64_t>(g.num_layers));
    CHECK(got.stats0.plans == 1);
    CHECK(got.stats0.uploads == 1);  // one plan serves every layer
  }
}

TEST_CASE("bf16 storage accumulates in f32 and rounds once", "[engine][attention]") {
  attention_env env;
  for (std::uint32_t seed = 100; seed < 110; ++seed) {
    std::mt19937 rng(seed);
    problem p = random_problem(rng);
    p.storage = gpu::data_type::bf16;
    p.round_to_storage();
    group_options g;
    g.kv_chunk_pages = seed % 2;
    const reference_result want = reference(p);
    const group_run got = run_group(env, p, g, seed);
    for (const auto& ec : got.errors) REQUIRE_FALSE(ec);
    INFO("seed " << seed);
    // Inputs are exact bf16; only the output's rounding to bf16 (8 bits) is left.
    CHECK(max_rel_error(got.out, want.out, static_cast<std::size_t>(p.head_dim)) <= 1.0 / 128);
    CHECK(max_lse_error(got.lse, want.lse) <= 1e-5);
  }
}

TEST_CASE("DCP over 1, 2, 3, 4 and 8 ranks equals one rank, for both merges", "[engine][attention][dcp]") {
  attention_env env;
  const std::int32_t worlds[] = {2, 3, 4, 8, 1};
  const dcp_merge merges[] = {dcp_merge::all_gather, dcp_merge::lse_all_gather_reduce_scatter};
  int cases = 0;
  int empty_shard_cases = 0;
  for (std::uint32_t seed = 1000; seed < 1220; ++seed) {
    const std::int32_t world = worlds[seed % 5];
    const dcp_merge merge = merges[(seed / 5) % 2];
    std::mt19937 rng(seed);
    problem_options o;
    o.max_prefix = 48;
    o.max_prefill = 8;
    o.heads_multiple_of = merge == dcp_merge::lse_all_gather_reduce_scatter ? world : 1;
    o.kv_heads = {1, 2, 3, 4, 6, 8};
    o.head_dims = {64};
    problem p = random_problem(rng, o);
    group_options one;
    one.kv_chunk_pages = 0;
    group_options g;
    g.world = world;
    g.interleave = std::uniform_int_distribution<std::int32_t>(1, 5)(rng);
    g.merge = merge;
    g.kv_chunk_pages = seed % 3 == 0 ? 1 : 0;
    g.base = seed % 2 == 0 ? lse_base::e : lse_base::two;
    for (std::int32_t s : p.seq_lens) {
      if (s < world * g.interleave) {
        ++empty_shard_cases;
        break;
      }
    }
    const group_run single = run_group(env, p, one, seed);
    const group_run many = run_group(env, p, g, seed + 7);
    INFO("seed " << seed << " world " << world << " interleave " << g.interleave << " merge " << name_of(merge)
                 << " heads " << p.heads());
    for (const auto& ec : single.errors) REQUIRE_FALSE(ec);
    for (const auto& ec : many.errors) REQUIRE_FALSE(ec);
    CHECK(max_rel_error(many.out, single.out, static_cast<std::size_t>(p.head_dim)) <= 1e-5);
    double lse_err = 0;
    for (std::size_t i = 0; i < single.lse.size(); ++i) {
      lse_err = std::max(lse_err, std::abs(static_cast<double>(many.lse[i] - single.lse[i])) /
                                      std::max(1.0, std::abs(static_cast<double>(single.lse[i]))));
    }
    CHECK(lse_err <= 1e-5);
    for (float x : many.out) REQUIRE(std::isfinite(x));
    if (world > 1) CHECK(many.stats0.dcp_bytes > 0);
    ++cases;
  }
  CHECK(cases >= 200);
  CHECK(empty_shard_cases >= 50);
}

TEST_CASE("the phases of an all-gather DCP run alternate compute and communication", "[engine][attention][dcp]") {
  attention_env env;
  std::mt19937 rng(5);
  problem p = random_problem(rng);
  kv_cache_config cc{1, 64, p.page_size, p.kv_heads, p.head_dim, gpu::data_type::f32};
  paged_kv_cache cache(env.dev, cc);
  auto comms = gpu::host::make_communicators(2);
  attention_config ac{p.heads() * 2, p.scale, {2, 0, 1}, dcp_merge::all_gather};
  batch_attention a(env.dev, cache, ac, &comms[0]);
  attention_plan plan;
  std::vector<std::int32_t> indptr(static_cast<std::size_t>(p.reqs()) + 1, 0);
  std::vector<std::int32_t> indices;
  for (std::int32_t i = 0; i < p.reqs(); ++i) {
    const auto n = page_pool::pages_for(ac.dcp.local_length(p.seq_lens[static_cast<std::size_t>(i)]), p.page_size);
    for (std::int32_t k = 0; k < n; ++k) indices.push_back(static_cast<std::int32_t>(indices.size()));
    indptr[static_cast<std::size_t>(i) + 1] = static_cast<std::int32_t>(indices.size());
  }
  a.plan({p.batch(), page_table_view(indptr, indices)}, plan);
  REQUIRE(a.phase_count(plan) == 3);
  CHECK(a.phase_role(plan, 0) == gpu::stream_role::compute);
  CHECK(a.phase_role(plan, 1) == gpu::stream_role::communication);
  CHECK(a.phase_role(plan, 2) == gpu::stream_role::compute);
}
