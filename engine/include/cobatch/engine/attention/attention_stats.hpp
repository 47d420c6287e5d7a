// attention_stats: what a batch_attention wrapper has done, as the seed's
// get_stats() reports it: plans, runs, tokens, bytes moved by DCP, plan time.
#pragma once

#include <cstdint>

namespace cobatch::engine {

struct attention_stats {
  std::uint64_t plans = 0;            ///< successful plans
  std::uint64_t plan_failures = 0;    ///< plans rejected as bad input
  std::uint64_t plan_ns_total = 0;    ///< wall time spent planning
  std::uint64_t plan_ns_max = 0;
  std::uint64_t planned_requests = 0;
  std::uint64_t planned_kv_tokens = 0;  ///< this rank's KV tokens over plans
  std::uint64_t runs = 0;             ///< layer runs enqueued in full
  std::uint64_t query_tokens = 0;     ///< query tokens over runs
  std::uint64_t appended_tokens = 0;  ///< K/V rows written into the cache
  std::uint64_t dcp_bytes = 0;        ///< bytes this rank's DCP collectives sent plus received
  std::uint64_t uploads = 0;          ///< plan tables copied to the device (once per plan)
  std::uint64_t workspace_bytes = 0;  ///< current workspace size
  std::uint64_t workspace_allocations = 0;  ///< times the workspace grew

  double mean_plan_ns() const noexcept {
    return plans == 0 ? 0.0 : static_cast<double>(plan_ns_total) / static_cast<double>(plans);
  }
};

}  // namespace cobatch::engine
