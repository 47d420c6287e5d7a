// engine_service: the server's one door into the engine. The HTTP thread
// submits and cancels; one engine thread runs the engine's serving loop,
// which batches every live request continuously (requests join and leave the
// running batch at step boundaries); what each step produced comes back to
// the HTTP thread in one post per step, into each request's `generation`.
//
// This is the seam: routes know only what is declared here (token ids in,
// token ids and a finish reason out, gauges), so the engine behind it can
// change without touching the HTTP side.
#pragma once

#include "metrics.hpp"
#include "openai_schema.hpp"

#include <cobatch/engine/step/request_stream.hpp>

#include <asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace cobatch::server {

/// Which weights the reference model runs with.
struct model_source {
  std::uint64_t seed = 0;                  ///< seeded random weights ...
  std::optional<std::string> safetensors;  ///< ... or this file
  /// The model's shape, a preset of the reference model ("tiny", "small").
  std::string shape = "tiny";
};

struct engine_options {
  model_source model;
  std::string model_id;          ///< the name clients send as "model"; empty: derived
  std::int32_t dcp_ranks = 1;    ///< decode-context-parallel ranks (in-process)
  /// Micro-batches a step may be split into; 0: chosen by effective_max_ubatches().
  std::int32_t max_ubatches = 0;
  std::int32_t max_running = 256;
  std::int32_t kv_pages = 4096;  ///< KV pages per rank
  std::int32_t page_size = 16;   ///< tokens per page
  /// The host model's BLAS threads; 0: the machine's cores over the ranks.
  std::int32_t blas_threads = 0;
  /// Tokens per step: fixed when > 0, else the engine's tuner chooses it
  /// between min_token_budget and 8192, keeping steps under target_step_time.
  std::int32_t token_budget = 0;
  /// The tuner's floor. The tuner starts there and climbs; a floor that holds
  /// a full batch of decodes plus a few prompts keeps new requests from
  /// waiting steps for admission while it learns.
  std::int32_t min_token_budget = 256;
  std::chrono::milliseconds target_step_time{50};
};

/// The micro-batch limit a server runs with. Micro-batches exist so that one
/// micro-batch's collective (the DCP ranks' exchange of attention partials)
/// overlaps another's compute. With one rank there is nothing to overlap, and
/// splitting a step only runs every weight matrix twice over half the rows:
/// 1 then, 2 with more ranks, unless `max_ubatches` says otherwise.
inline std::int32_t effective_max_ubatches(const engine_options& o) noexcept {
  if (o.max_ubatches > 0) return o.max_ubatches;
  return o.dcp_ranks > 1 ? 2 : 1;
}

struct generation_params {
  std::vector<std::int32_t> prompt;
  std::int32_t max_tokens = 16;
  float temperature = 1.0f;
  float top_p = 1.0f;
  std::uint64_t seed = 0;
  std::vector<std::int32_t> stop_tokens;
};

/// How a generation ended, as the engine says.
enum class generation_end { running, length, stop, cancelled, refused, failed };

/// One request's stream of tokens as the HTTP thread sees it: the engine's
/// request_stream plus what has arrived and not been taken yet. Used on the
/// HTTP thread only.
class generation {
 public:
  explicit generation(engine::request_stream stream) : stream_(std::move(stream)) {}

  /// Tokens delivered and not yet taken.
  std::span<const std::int32_t> pending() const noexcept { return pending_; }
  void clear_pending() noexcept { pending_.clear(); }
  bool finished() const noexcept { return end_ != generation_end::running; }
  generation_end end() const noexcept { return end_; }
  /// Why it was refused or failed.
  const std::string& error() const noexcept { return error_; }

  /// Completes (at once if already so) when tokens are pending or the
  /// generation has finished. Terminal cancellation completes it early,
  /// with nothing new; the request keeps running until cancel().
  asio::awaitable<void> wait();
  /// The engine ends the request at its next step and frees its KV pages.
  void cancel() const { stream_.cancel(); }

 private:
  engine::request_stream stream_;
  std::vector<std::int32_t> pending_;
  generation_end end_ = generation_end::running;
  std::string error_;
};

class engine_service {
 public:
  /// Builds the model and the engine and starts the engine thread. Step
  /// times go to `metrics`. Throws on a bad option or model file.
  engine_service(engine_options options, server_metrics& metrics);
  ~engine_service();
  engine_service(const engine_service&) = delete;
  engine_service& operator=(const engine_service&) = delete;

  const model_card& card() const noexcept;
  /// The byte-level tokenizer: one token per byte of `text`, plus whatever
  /// the model puts in front.
  std::vector<std::int32_t> tokenize(std::string_view text) const;
  /// The bytes of generated tokens (special tokens contribute none).
  void append_bytes(std::span<const std::int32_t> tokens, std::string& out) const;

  /// Any thread. The generation delivers to the executor of whoever awaits
  /// its wait(); cancel() ends it early.
  std::shared_ptr<generation> submit(generation_params params);

  /// Any thread.
  engine_gauges gauges() const;

  /// Cancels what is left, stops the engine thread and joins it. Idempotent.
  void stop();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace cobatch::server
