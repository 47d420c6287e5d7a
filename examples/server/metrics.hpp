// metrics: the server's counters and histograms, and the Prometheus text
// exposition (format 0.0.4) that GET /metrics returns.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

namespace cobatch::server {

/// A Prometheus histogram with fixed upper bounds. observe() may be called
/// from any thread (the engine thread records step times, the HTTP thread
/// latencies); relaxed atomics suffice because a scrape only needs each
/// counter to be monotonic, not a snapshot consistent across buckets.
class histogram {
 public:
  explicit histogram(std::initializer_list<double> upper_bounds);
  void observe(double value) noexcept;
  /// Appends the _bucket, _sum and _count lines with HELP and TYPE.
  void render(std::string& out, std::string_view name, std::string_view help) const;
  std::uint64_t count() const noexcept { return count_.load(std::memory_order_relaxed); }

 private:
  std::vector<double> bounds_;
  std::vector<std::atomic<std::uint64_t>> buckets_;  // per bucket, not cumulative
  std::atomic<std::uint64_t> count_{0};
  std::atomic<double> sum_{0.0};
};

/// How a request ended, the label of cobatch_requests_total.
enum class request_outcome : std::size_t {
  ok,            // 2xx
  bad_request,   // 400, 404, 405, 413, 415, 431
  overloaded,    // 503 (waiting room full, too many connections, shutting down)
  cancelled,     // the client went away before the answer was complete
  timeout,       // headers or body too slow: the connection was closed
  failed,        // 500: the engine failed the request
  count_
};
std::string_view outcome_label(request_outcome o) noexcept;

/// Generated tokens per second over a sliding window of whole 100 ms slices.
class token_rate {
 public:
  using clock = std::chrono::steady_clock;
  void add(std::size_t tokens, clock::time_point now) noexcept;
  double per_second(clock::time_point now) const noexcept;

 private:
  static constexpr std::size_t slices = 50;  // 5 s
  static constexpr auto slice = std::chrono::milliseconds(100);
  std::int64_t slice_of(clock::time_point t) const noexcept;
  std::array<std::uint64_t, slices> counts_{};
  std::array<std::int64_t, slices> ids_{};  // which slice each entry counts
  clock::time_point started_ = clock::now();
};

/// What the engine reports at the moment of a scrape.
struct engine_gauges {
  std::size_t waiting = 0;  // requests in the engine's waiting queue
  std::size_t running = 0;  // requests in the running batch
  std::size_t kv_pages_in_use = 0;
  std::size_t kv_pages_total = 0;
  std::uint64_t steps = 0;
  std::uint64_t preemptions = 0;
};

/// The server's own figures. Everything but the histograms is touched on the
/// HTTP thread only.
class server_metrics {
 public:
  server_metrics();

  void count(request_outcome o) noexcept { ++outcomes_[static_cast<std::size_t>(o)]; }
  std::uint64_t count_of(request_outcome o) const noexcept {
    return outcomes_[static_cast<std::size_t>(o)];
  }
  void tokens_generated(std::size_t n, token_rate::clock::time_point now) noexcept;

  histogram time_to_first_token{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
  histogram time_per_output_token{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1};
  histogram step_time{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1};

  struct server_gauges {
    std::size_t open_connections = 0;
    std::size_t waiting_room = 0;  // accepted, not yet admitted by the engine
    std::size_t in_flight = 0;     // completion requests not yet answered
  };
  /// The whole exposition.
  std::string render(const server_gauges& server, const engine_gauges& engine) const;

 private:
  std::array<std::uint64_t, static_cast<std::size_t>(request_outcome::count_)> outcomes_{};
  std::uint64_t generated_tokens_ = 0;
  token_rate rate_;
};

}  // namespace cobatch::server
