#include <cobatch/engine/attention/ubatch_attention.hpp>

#include "attention_harness.hpp"

#include <cobatch/coro/sync_wait.hpp>
#include <cobatch/engine/ubatch/ubatch_scheduler.hpp>
#include <cobatch/gpu/stream_pool.hpp>

#include <catch2/catch.hpp>

#include <random>

using namespace cobatch;
using namespace cobatch::engine;
using namespace cobatch::engine::test;

TEST_CASE("two micro-batches run DCP attention with the exchange at switch points", "[engine][attention][ubatch]") {
  attention_env env;
  for (const dcp_merge merge : {dcp_merge::all_gather, dcp_merge::lse_all_gather_reduce_scatter}) {
    std::mt19937 rng(11);
    problem_options o;
    o.max_reqs = 6;
    o.kv_heads = {2};
    o.groups = {2};
    problem p = random_problem(rng, o);
    while (p.reqs() < 2) p = random_problem(rng, o);
    const std::int32_t world = 2;
    group_options g;
    g.world = world;
    g.interleave = 3;
    g.merge = merge;
    auto comms = gpu::host::make_communicators(world);
    std::vector<rank_state> ranks(static_cast<std::size_t>(world));
    for (std::int32_t r = 0; r < world; ++r) setup_rank(env, p, g, r, ranks[static_cast<std::size_t>(r)], rng, &comms[static_cast<std::size_t>(r)]);

    // Micro-batch u takes requests [split[u], split[u + 1]).
    const std::int32_t half = p.reqs() / 2;
    const std::int32_t split[3] = {0, half, p.reqs()};
    struct ubatch_part {
      std::vector<std::int32_t> qsl, seq;
      page_table table{1};
      std::unique_ptr<batch_attention> attn;
      attention_plan plan;
      attention_io io;
    };
    std::vector<std::vector<ubatch_part>> parts(static_cast<std::size_t>(world));
    for (std::int32_t r = 0; r < world; ++r) {
      auto& rs = ranks[static_cast<std::size_t>(r)];
      parts[static_cast<std::size_t>(r)].resize(2);
      for (int u = 0; u < 2; ++u) {
        auto& part = parts[static_cast<std::size_t>(r)][static_cast<std::size_t>(u)];
        part.table = page_table(rs.cache->config().num_pages);
        part.qsl.push_back(0);
        for (std::int32_t i = split[u]; i < split[u + 1]; ++i) {
          part.qsl.push_back(part.qsl.back() + p.q_lens[static_cast<std::size_t>(i)]);
          part.seq.push_back(p.seq_lens[static_cast<std::size_t>(i)]);
          part.table.add_request(rs.pages[static_cast<std::size_t>(i)]);
        }
        attention_config ac = rs.attn->config();
        part.attn = std::make_unique<batch_attention>(env.dev, *rs.cache, ac, &comms[static_cast<std::size_t>(r)]);
        part.attn->plan({{part.qsl, part.seq, part.qsl.back()}, part.table.view()}, part.plan);
        // The micro-batch's rows of the step's tensors.
        const std::size_t t0 = static_cast<std::size_t>(p.qsl[static_cast<std::size_t>(split[u])]);
        const std::size_t nt = static_cast<std::size_t>(part.qsl.back());
        const std::size_t h = static_cast<std::size_t>(p.heads());
        const std::size_t d = static_cast<std::size_t>(p.head_dim);
        const std::size_t oh = static_cast<std::size_t>(part.plan.output_heads());
        part.io.q = rs.q.as<float>().subspan(t0 * h * d, nt * h * d);
        part.io.new_k = rs.new_k.as<float>().subspan(t0 * p.row(), nt * p.row());
        part.io.new_v = rs.new_v.as<float>().subspan(t0 * p.row(), nt * p.row());
        part.io.out = rs.out.as<float>().subspan(t0 * oh * d, nt * oh * d);
        part.io.lse = lse_ref::base_e(rs.lse.as<float>().subspan(t0 * oh, nt * oh));
      }
    }
    // Each rank's step: two micro-batches on shared compute and comm streams.
    std::vector<std::unique_ptr<gpu::stream_pool>> pools;
    std::vector<gpu::stream_ref> streams;
    for (std::int32_t r = 0; r < world; ++r) {
      pools.push_back(std::make_unique<gpu::stream_pool>(env.dev));
      ubatch_scheduler scheduler(env.dev, *pools.back());
      auto& mine = parts[static_cast<std::size_t>(r)];
      coro::sync_wait(env.loop, scheduler.run(2, [&](ubatch_context& ctx) -> coro::task<void> {
        auto& part = mine[static_cast<std::size_t>(ctx.index())];
        co_await run_attention(ctx, *part.attn, part.plan, part.io);
      }));
      streams.push_back(scheduler.compute_stream(0));
      streams.push_back(scheduler.comm_stream(0));
    }
    for (auto ec : env.wait(streams)) REQUIRE_FALSE(ec);
    group_run got;
    collect_outputs(p, g, ranks, got);
    const reference_result want = reference(p);
    INFO("merge " << name_of(merge));
    CHECK(max_rel_error(got.out, want.out, static_cast<std::size_t>(p.head_dim)) <= 1e-5);
    CHECK(parts[0][0].attn->stats().runs == 1);
    CHECK(parts[0][1].attn->stats().runs == 1);
  }
}
