#include <cobatch/engine/step/block_table.hpp>
#include <cobatch/engine/step/step_planner.hpp>

#include "engine_test_support.hpp"

#include <cobatch/engine/dispatch/capture_ladder.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <vector>

using namespace cobatch::engine;
using namespace cobatch::engine::test;

namespace {

// A consumer's copy of a table, kept by applying only the writes, as the
// step runner's device-side copy is.
struct table_copy {
  std::vector<std::int32_t> entries;
  void apply(std::span<const std::int32_t> table, std::span<const block_range> writes) {
    entries.resize(std::max(entries.size(), table.size()), -7);
    for (const block_range& w : writes) {
      REQUIRE(w.offset >= 0);
      REQUIRE(static_cast<std::size_t>(w.offset) + static_cast<std::size_t>(w.count) <= table.size());
      std::copy_n(table.begin() + w.offset, w.count, entries.begin() + w.offset);
    }
  }
  std::vector<std::int32_t> row(std::int32_t begin, std::int32_t end) const {
    return {entries.begin() + begin, entries.begin() + end};
  }
};

std::vector<std::int32_t> to_vector(std::span<const std::int32_t> s) { return {s.begin(), s.end()}; }

}  // namespace

TEST_CASE("block_table: rows grow, move and compact; a copy kept by the writes equals the table",
          "[engine][step][block_table]") {
  for (std::uint64_t seed = 1; seed <= 4; ++seed) {
    std::mt19937_64 rng(seed);
    constexpr std::int32_t pages = 64;
    block_table t(pages);
    std::map<std::uint32_t, std::vector<std::int32_t>> want;  // the rows, rebuilt from scratch
    std::int32_t next_page = 0, held = 0;
    table_copy copy;
    for (int round = 0; round < 400; ++round) {
      for (int op = 0; op < 4; ++op) {
        const auto r = static_cast<std::uint32_t>(rng() % 12);
        if (rng() % 5 == 0) {
          held -= static_cast<std::int32_t>(want[r].size());
          t.release(r);
          want.erase(r);
          continue;
        }
        const std::int32_t n = 1 + static_cast<std::int32_t>(rng() % 6);
        const bool fits = held + n <= pages;
        std::vector<std::int32_t> add;
        for (std::int32_t k = 0; k < n; ++k) add.push_back(next_page++ % 1000);
        if (!fits) {
          CHECK(thrown_by([&] { t.append(r, add); }).code() == make_error_code(errc::no_capacity));
          continue;
        }
        t.append(r, add);
        auto& w = want[r];
        w.insert(w.end(), add.begin(), add.end());
        held += n;
      }
      copy.apply(t.entries(), t.writes());
      t.clear_writes();
      for (const auto& [r, w] : want) {
        REQUIRE(to_vector(t.row(r)) == w);
        REQUIRE(copy.row(t.begin(r), t.begin(r) + t.size(r)) == w);
        REQUIRE(t.begin(r) + t.size(r) <= static_cast<std::int32_t>(t.entries().size()));
      }
    }
    CHECK(t.compactions() > 0);  // the bound was reached and rows moved
    CHECK(t.capacity() == block_table::capacity_for(pages));
  }
  CHECK(thrown_by([] { (void)block_table(0); }).code() == make_error_code(errc::invalid_argument));
}

TEST_CASE("step_planner: the block table kept across steps equals a from-scratch rebuild",
          "[engine][step][planner][block_table]") {
  std::size_t preempted = 0;
  for (std::uint64_t seed = 1; seed <= 6; ++seed) {
    std::mt19937_64 rng(seed);
    const std::int32_t dcp = seed % 3 == 0 ? 2 : 1;
    planner_options o;
    // With few running slots, requests waiting for their last token still
    // hold rows while others are admitted: more rows than max_running.
    o.max_running = seed % 2 == 0 ? 2 : 12;
    o.num_pages = 48;  // small: growth preempts
    o.page_size = 4;
    o.dcp_world = dcp;
    o.limits = {160, 32};
    o.ubatches = {1, 2};
    dispatch_router router(capture_ladder::standard(64));
    for (std::uint32_t rung : router.ladder().sizes()) router.declare(dispatch_mode::full, dispatch_key::for_tokens(rung));
    step_planner p(o, std::move(router));
    step_updates out;
    request_id next = 1;
    table_copy copy;
    std::uint64_t copy_step = 0;
    std::map<request_id, std::vector<std::int32_t>> last_row;  // the pages a request held when last scheduled
    std::size_t full_copies = 0, finished = 0;
    step_plan plan;
    for (int step = 0; step < 300; ++step) {
      for (int k = static_cast<int>(rng() % 3); k > 0; --k) {
        const auto len = static_cast<std::size_t>(1 + rng() % 40);
        std::vector<std::int32_t> stops;
        if (rng() % 4 == 0) stops.push_back(static_cast<std::int32_t>(rng() % 32));
        p.add(next++, {.prompt = std::vector<std::int32_t>(len, 3), .max_tokens = 1 + static_cast<std::int32_t>(rng() % 60),
                       .stop_tokens = stops},
              out);
      }
      if (rng() % 8 == 0 && next > 1) p.cancel(1 + rng() % (next - 1));
      p.plan(1 + static_cast<std::int32_t>(rng() % 48), plan, out);
      for (request_id id : plan.preempted) last_row.erase(id);
      preempted += plan.preempted.size();
      if (plan.empty()) continue;

      // The consumer's copy: the writes on top of the last launched table,
      // or the whole table when it holds none.
      if (plan.block_base != 0 && plan.block_base == copy_step) {
        copy.apply(plan.block_table, plan.block_writes);
      } else {
        ++full_copies;
        const block_range all{0, static_cast<std::int32_t>(plan.block_table.size())};
        copy.apply(plan.block_table, std::span<const block_range>(&all, 1));
      }
      copy_step = plan.step;

      REQUIRE(plan.block_begin.size() == plan.requests.size());
      REQUIRE(plan.block_end.size() == plan.requests.size());
      std::set<std::int32_t> seen;
      for (std::size_t i = 0; i < plan.requests.size(); ++i) {
        const scheduled_request& r = plan.requests[i];
        // From scratch: the pages its context needs, the planner's own record
        // of them, distinct across requests, in the pool.
        const auto rebuilt = to_vector(p.table().row(r.handle));
        const auto seq_len = plan.seq_lens[i];
        REQUIRE(static_cast<std::int32_t>(rebuilt.size()) == kv_pages_for(seq_len, o.page_size, dcp));
        REQUIRE(plan.block_end[i] - plan.block_begin[i] == static_cast<std::int32_t>(rebuilt.size()));
        REQUIRE(to_vector(plan.block_table.subspan(static_cast<std::size_t>(plan.block_begin[i]), rebuilt.size())) ==
                rebuilt);
        REQUIRE(copy.row(plan.block_begin[i], plan.block_end[i]) == rebuilt);
        for (std::int32_t pg : rebuilt) {
          REQUIRE(pg >= 0);
          REQUIRE(pg < o.num_pages);
          REQUIRE(seen.insert(pg).second);
        }
        // A request keeps its pages from step to step; it only gains new ones.
        auto it = last_row.find(r.id);
        if (it != last_row.end()) {
          REQUIRE(rebuilt.size() >= it->second.size());
          REQUIRE(std::equal(it->second.begin(), it->second.end(), rebuilt.begin()));
        }
        last_row[r.id] = rebuilt;
      }
      REQUIRE(static_cast<std::int32_t>(seen.size()) <= p.gauges().pages_in_use);

      std::vector<std::int32_t> sampled(plan.requests.size());
      for (auto& s : sampled) s = static_cast<std::int32_t>(rng() % 32);
      if (rng() % 40 == 0) {
        p.fail(plan, make_error_code(errc::ubatch_failed), "failed on purpose", out);
        for (const scheduled_request& r : plan.requests) last_row.erase(r.id);  // rolled back: pages given up
        copy_step = 0;  // as the runner after a failed step
      } else {
        p.commit(plan, sampled, out);
      }
      for (const request_update& u : out.updates) {
        if (u.finish != finish_reason::none) {
          last_row.erase(u.id);
          ++finished;
        }
      }
      out.clear();
    }
    CHECK(finished > 0);
    CHECK(full_copies >= 1);
    CHECK(p.table().compactions() > 0);
  }
  CHECK(preempted > 0);
}
