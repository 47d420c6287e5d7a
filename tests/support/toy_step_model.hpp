// A deterministic step_model for the engine's tests: small enough to run a
// thousand requests under sanitizers, yet it reads its context through the
// KV pages, so a wrong block table, a lost page or a wrong recompute after
// preemption changes its tokens.
//
// Stage 0 writes each real token's value (a mix of its id and position)
// into the KV page slot of its position, and sums, for each request that
// samples, the values of its whole context as read through the block table.
// The last stage turns the sum into logits and samples: greedy (argmax,
// which is sum % vocab) or seeded (sum + a draw from (seed, output index)).
// With `segments` > 1 the stages are graph, (collective, eager)..., collective,
// graph; collectives and eager stages copy nothing. A collective can be set to
// fail, and so can a compute stage, to test failure handling.
#pragma once

#include <cobatch/engine/step/step_model.hpp>
#include <cobatch/gpu/stream.hpp>

#include <atomic>
#include <span>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace cobatch::engine::test {

inline std::uint64_t splitmix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

class toy_step_model final : public step_model {
 public:
  toy_step_model(std::int32_t vocab, std::int32_t max_context, std::int32_t num_pages, std::int32_t page_size,
                 std::int32_t segments = 1)
      : vocab_(vocab), max_context_(max_context), page_size_(page_size), segments_(segments),
        kv_(static_cast<std::size_t>(num_pages) * static_cast<std::size_t>(page_size), 0) {
    stages_.push_back(stage_kind::graph);
    for (std::int32_t k = 1; k < segments; ++k) {
      stages_.push_back(stage_kind::collective);
      stages_.push_back(k + 1 < segments ? stage_kind::eager : stage_kind::graph);
    }
  }

  model_info info() const override { return {vocab_, max_context_, 1, 0}; }
  std::span<const stage_kind> stages() const override { return stages_; }
  void bind(const ubatch_io& io) override {
    if (sums_.size() <= static_cast<std::size_t>(io.slot)) sums_.resize(static_cast<std::size_t>(io.slot) + 1);
    sums_[static_cast<std::size_t>(io.slot)].assign(static_cast<std::size_t>(io.capacity_reqs), 0);
  }
  void plan(const step_plan&, std::int32_t, const ubatch&, const ubatch_io&, gpu::stream_ref) override {}

  void enqueue_stage(std::int32_t stage, const ubatch_io& io, std::int32_t, gpu::stream_ref s) override {
    const stage_kind kind = stages_[static_cast<std::size_t>(stage)];
    if (kind == stage_kind::collective) {
      const bool fail = fail_collective.exchange(false);
      s.enqueue([fail, stage] {
        if (fail) throw std::runtime_error("toy model: collective at stage " + std::to_string(stage) + " failed on purpose");
      });
      return;
    }
    if (fail_next_segment.exchange(false))
      throw std::runtime_error("toy model: stage " + std::to_string(stage) + " failed on purpose");
    const ubatch_io* p = &io;
    if (stage == 0) s.enqueue([this, p] { attend(*p); });
    if (kind == stage_kind::eager) s.enqueue([] {});
    if (stage == static_cast<std::int32_t>(stages_.size()) - 1) s.enqueue([this, p] { sample(*p); });
  }
  void recover() override { ++recoveries; }

  /// Makes the next enqueue_segment call throw.
  std::atomic<bool> fail_next_segment{false};
  /// Makes the next collective fail on the stream.
  std::atomic<bool> fail_collective{false};
  std::atomic<std::int32_t> recoveries{0};

 private:
  static std::uint64_t value(std::int32_t token, std::int32_t position) {
    return splitmix((static_cast<std::uint64_t>(token) << 32) ^ static_cast<std::uint64_t>(position)) >> 40;
  }
  std::uint64_t& slot_of(const ubatch_io& io, std::int32_t req, std::int32_t position) {
    const std::int32_t index = io.block_indptr[req] + position / page_size_;
    const std::int32_t page = index < io.block_indptr[req + 1] ? io.block_indices[index] : -1;
    if (page < 0) throw std::runtime_error("toy model: position " + std::to_string(position) + " has no page");
    return kv_[static_cast<std::size_t>(page) * static_cast<std::size_t>(page_size_) +
               static_cast<std::size_t>(position % page_size_)];
  }
  void attend(const ubatch_io& io) {
    const std::int32_t reqs = io.counts[1];
    auto& sums = sums_[static_cast<std::size_t>(io.slot)];
    for (std::int32_t r = 0; r < reqs; ++r) {
      for (std::int32_t row = io.query_start_loc[r]; row < io.query_start_loc[r + 1]; ++row)
        slot_of(io, r, io.positions[row]) = value(io.token_ids[row], io.positions[row]);
      std::uint64_t sum = 0;
      if (io.sample_rows[r] >= 0)
        for (std::int32_t pos = 0; pos < io.seq_lens[r]; ++pos) sum += slot_of(io, r, pos);
      sums[static_cast<std::size_t>(r)] = sum;
    }
  }
  void sample(const ubatch_io& io) {
    const std::int32_t reqs = io.counts[1];
    const auto& sums = sums_[static_cast<std::size_t>(io.slot)];
    for (std::int32_t r = 0; r < reqs; ++r) {
      if (io.sample_rows[r] < 0) continue;
      std::uint64_t x = sums[static_cast<std::size_t>(r)];
      if (io.temperature[r] > 0.0f) x += splitmix(io.seed[r] * 1000003ull + static_cast<std::uint64_t>(io.sample_index[r]));
      const auto token = static_cast<std::int32_t>(x % static_cast<std::uint64_t>(vocab_));
      io.sampled[io.req_slots[r]] = token;
      if (io.logits != nullptr) {
        float* row = io.logits + static_cast<std::size_t>(io.req_slots[r]) * static_cast<std::size_t>(vocab_);
        for (std::int32_t v = 0; v < vocab_; ++v) row[v] = v == token ? 1.0f : 0.0f;
      }
    }
  }

  std::int32_t vocab_, max_context_, page_size_;
  [[maybe_unused]] std::int32_t segments_;
  std::vector<stage_kind> stages_;
  std::vector<std::uint64_t> kv_;
  std::vector<std::vector<std::uint64_t>> sums_;
};

}  // namespace cobatch::engine::test
