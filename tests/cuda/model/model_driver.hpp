// Drives the reference model through its step_model interface on any
// backend, one micro-batch per step, eagerly, with the runner's inputs in the
// model's device memory (filled by stream-ordered copies, as a runner's
// copy-in does): the same steps on the host and on CUDA, for the comparison
// test and the decode benchmark. Request i keeps its KV pages in
// [i * pages_per_request, (i + 1) * pages_per_request).
#pragma once

#include "llama_model.hpp"

#include <cobatch/coro/run_loop.hpp>
#include <cobatch/coro/sync_wait.hpp>
#include <cobatch/coro/use_task.hpp>
#include <cobatch/gpu/copy.hpp>

#include <cstdint>
#include <span>
#include <stdexcept>
#include <vector>

namespace model_test {

/// One request's part of a step.
struct step_request {
  std::vector<std::int32_t> tokens;  ///< this step's query tokens
  std::int32_t context_before = 0;   ///< tokens already in its KV cache
  std::int32_t sample_index = 0;
  float temperature = 0.0f;
  float top_p = 1.0f;
  std::uint64_t seed = 0;
};

struct step_result {
  std::vector<float> logits;          ///< [request][vocab]
  std::vector<std::int32_t> sampled;  ///< [request]
};

class step_driver {
 public:
  step_driver(cobatch::coro::run_loop& loop, cobatch::gpu::device& device, const cobatch::model::llama_weights& w,
              std::int32_t max_tokens, std::int32_t max_reqs, std::int32_t pages_per_request)
      : loop_(&loop),
        vocab_(w.config.vocab_size),
        pages_per_request_(pages_per_request),
        model_(device, w, cobatch::model::llama_rank_options{max_reqs * pages_per_request, page_size, 0, nullptr}),
        stream_(device.make_stream()) {
    auto i32 = [&](std::int32_t n) { return cobatch::gpu::typed_buffer<std::int32_t>(device, static_cast<std::size_t>(n)); };
    auto f32 = [&](std::int32_t n) { return cobatch::gpu::typed_buffer<float>(device, static_cast<std::size_t>(n)); };
    token_ids_ = i32(max_tokens);
    positions_ = i32(max_tokens);
    query_start_loc_ = i32(max_reqs + 1);
    seq_lens_ = i32(max_reqs);
    block_indptr_ = i32(max_reqs + 1);
    block_indices_ = i32(max_reqs * pages_per_request);
    req_slots_ = i32(max_reqs);
    sample_rows_ = i32(max_reqs);
    sample_index_ = i32(max_reqs);
    counts_ = i32(2);
    dcp_ = i32(2);
    sampled_ = i32(max_reqs);
    temperature_ = f32(max_reqs);
    top_p_ = f32(max_reqs);
    logits_ = f32(max_reqs * vocab_);
    seed_ = cobatch::gpu::typed_buffer<std::uint64_t>(device, static_cast<std::size_t>(max_reqs));
    io_ = cobatch::engine::ubatch_io{0,
                                     max_tokens,
                                     max_reqs,
                                     max_reqs * pages_per_request,
                                     vocab_,
                                     token_ids_.data(),
                                     positions_.data(),
                                     query_start_loc_.data(),
                                     seq_lens_.data(),
                                     block_indptr_.data(),
                                     block_indices_.data(),
                                     req_slots_.data(),
                                     sample_rows_.data(),
                                     sample_index_.data(),
                                     temperature_.data(),
                                     top_p_.data(),
                                     seed_.data(),
                                     counts_.data(),
                                     dcp_.data(),
                                     sampled_.data(),
                                     logits_.data()};
    model_.bind(io_);
  }

  cobatch::model::llama_model& model() noexcept { return model_; }

  /// Runs one step over `requests` and waits for it.
  step_result run(const std::vector<step_request>& requests) {
    using namespace cobatch;
    const auto reqs = static_cast<std::int32_t>(requests.size());
    if (reqs < 1 || reqs > io_.capacity_reqs) throw std::invalid_argument("step_driver: request count out of range");
    std::vector<std::int32_t> ids, pos, qsl{0}, lens, indptr{0}, pages, slots, rows, index;
    std::vector<float> temp, top_p;
    std::vector<std::uint64_t> seed;
    for (std::int32_t i = 0; i < reqs; ++i) {
      const step_request& r = requests[static_cast<std::size_t>(i)];
      for (std::size_t t = 0; t < r.tokens.size(); ++t) {
        ids.push_back(r.tokens[t]);
        pos.push_back(r.context_before + static_cast<std::int32_t>(t));
      }
      qsl.push_back(static_cast<std::int32_t>(ids.size()));
      lens.push_back(r.context_before + static_cast<std::int32_t>(r.tokens.size()));
      const std::int32_t n = engine::page_pool::pages_for(lens.back(), page_size);
      if (n > pages_per_request_) throw std::invalid_argument("step_driver: a request outgrew its pages");
      for (std::int32_t p = 0; p < n; ++p) pages.push_back(i * pages_per_request_ + p);
      indptr.push_back(static_cast<std::int32_t>(pages.size()));
      slots.push_back(i);
      rows.push_back(qsl.back() - 1);
      index.push_back(r.sample_index);
      temp.push_back(r.temperature);
      top_p.push_back(r.top_p);
      seed.push_back(r.seed);
    }
    const auto tokens = static_cast<std::int32_t>(ids.size());
    if (tokens > io_.capacity_tokens) throw std::invalid_argument("step_driver: token count out of range");
    const std::vector<std::int32_t> counts{tokens, reqs}, dcp{0, 1};
    put(token_ids_, ids);
    put(positions_, pos);
    put(query_start_loc_, qsl);
    put(seq_lens_, lens);
    put(block_indptr_, indptr);
    put(block_indices_, pages);
    put(req_slots_, slots);
    put(sample_rows_, rows);
    put(sample_index_, index);
    put(temperature_, temp);
    put(top_p_, top_p);
    put(seed_, seed);
    put(counts_, counts);
    put(dcp_, dcp);

    engine::step_plan plan;
    plan.step = ++step_;
    plan.num_tokens = tokens;
    plan.page_size = page_size;
    plan.query_start_loc = qsl;
    plan.seq_lens = lens;
    // The plan names each request's row of a block table: here the pages
    // list itself, row i being [indptr[i], indptr[i+1]).
    plan.block_begin.assign(indptr.begin(), indptr.end() - 1);
    plan.block_end.assign(indptr.begin() + 1, indptr.end());
    plan.block_table = pages;
    engine::ubatch slice;
    slice.token_end = tokens;
    slice.req_end = reqs;
    slice.padded_tokens = tokens;
    slice.query_start_loc = slice.padded_query_start_loc = plan.query_start_loc;
    slice.seq_lens = slice.padded_seq_lens = plan.seq_lens;
    model_.plan(plan, 0, slice, io_, stream_);
    const auto stages = static_cast<std::int32_t>(model_.stages().size());
    for (std::int32_t st = 0; st < stages; ++st) model_.enqueue_stage(st, io_, tokens, stream_);

    step_result out;
    out.logits.resize(static_cast<std::size_t>(reqs) * static_cast<std::size_t>(vocab_));
    out.sampled.resize(static_cast<std::size_t>(reqs));
    gpu::copy_async(std::span<float>(out.logits), logits_.span().first(out.logits.size()), stream_);
    gpu::copy_async(std::span<std::int32_t>(out.sampled), sampled_.span().first(out.sampled.size()), stream_);
    coro::sync_wait(*loop_, [](gpu::stream_ref s) -> coro::task<void> { co_await s.async_wait(coro::use_task); }(stream_));
    return out;
  }

  static constexpr std::int32_t page_size = 16;

 private:
  template <class T>
  void put(const cobatch::gpu::typed_buffer<T>& dst, const std::vector<T>& src) {
    cobatch::gpu::copy_async(dst.span().first(src.size()), std::span<const T>(src), stream_);
  }

  cobatch::coro::run_loop* loop_;
  std::int32_t vocab_;
  std::int32_t pages_per_request_;
  // Declared before the model and the stream: freed after the stream (whose
  // destructor waits for its work) and the model that reads them.
  cobatch::gpu::typed_buffer<std::int32_t> token_ids_, positions_, query_start_loc_, seq_lens_, block_indptr_,
      block_indices_, req_slots_, sample_rows_, sample_index_, counts_, dcp_, sampled_;
  cobatch::gpu::typed_buffer<float> temperature_, top_p_, logits_;
  cobatch::gpu::typed_buffer<std::uint64_t> seed_;
  cobatch::engine::ubatch_io io_;
  cobatch::model::llama_model model_;
  cobatch::gpu::stream stream_;
  std::uint64_t step_ = 0;
};

}  // namespace model_test
