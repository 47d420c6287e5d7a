#include "metrics.hpp"

#include <cstdio>
#include <limits>

namespace cobatch::server {
namespace {

void append_number(std::string& out, double v) {
  char buf[64];
  if (v == std::numeric_limits<double>::infinity()) {
    out += "+Inf";
    return;
  }
  // Integers print without a fraction, bounds as written (0.1, not 0.1000...1).
  const int n = std::snprintf(buf, sizeof buf, "%.15g", v);
  out.append(buf, static_cast<std::size_t>(n));
}

void append_number(std::string& out, std::uint64_t v) { out += std::to_string(v); }

void header(std::string& out, std::string_view name, std::string_view help, std::string_view type) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

template <typename T>
void scalar(std::string& out, std::string_view name, std::string_view help, std::string_view type,
            T value) {
  header(out, name, help, type);
  out += name;
  out += ' ';
  append_number(out, value);
  out += '\n';
}

}  // namespace

histogram::histogram(std::initializer_list<double> upper_bounds)
    : bounds_(upper_bounds), buckets_(upper_bounds.size() + 1) {}

void histogram::observe(double value) noexcept {
  std::size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
}

void histogram::render(std::string& out, std::string_view name, std::string_view help) const {
  header(out, name, help, "histogram");
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += buckets_[i].load(std::memory_order_relaxed);
    out += name;
    out += "_bucket{le=\"";
    append_number(out, i < bounds_.size() ? bounds_[i] : std::numeric_limits<double>::infinity());
    out += "\"} ";
    append_number(out, cumulative);
    out += '\n';
  }
  out += name;
  out += "_sum ";
  append_number(out, sum_.load(std::memory_order_relaxed));
  out += '\n';
  out += name;
  out += "_count ";
  // The count is the +Inf bucket, as Prometheus requires, even if an observe
  // on another thread is half done.
  append_number(out, cumulative);
  out += '\n';
}

std::string_view outcome_label(request_outcome o) noexcept {
  switch (o) {
    case request_outcome::ok: return "ok";
    case request_outcome::bad_request: return "bad_request";
    case request_outcome::overloaded: return "overloaded";
    case request_outcome::cancelled: return "cancelled";
    case request_outcome::timeout: return "timeout";
    case request_outcome::failed: return "failed";
    case request_outcome::count_: break;
  }
  return "unknown";
}

std::int64_t token_rate::slice_of(clock::time_point t) const noexcept {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t - started_).count() / slice.count();
}

void token_rate::add(std::size_t tokens, clock::time_point now) noexcept {
  const auto id = slice_of(now);
  auto& i = ids_[static_cast<std::size_t>(id) % slices];
  auto& c = counts_[static_cast<std::size_t>(id) % slices];
  if (i != id) {
    i = id;
    c = 0;
  }
  c += tokens;
}

double token_rate::per_second(clock::time_point now) const noexcept {
  const auto current = slice_of(now);
  // The window is the last `slices - 1` whole slices: the current one is
  // still filling and would read low.
  std::uint64_t total = 0;
  for (std::size_t k = 0; k < slices; ++k) {
    if (ids_[k] < current && ids_[k] >= current - static_cast<std::int64_t>(slices - 1)) {
      total += counts_[k];
    }
  }
  const double window_s = static_cast<double>((slices - 1) * slice.count()) / 1000.0;
  return static_cast<double>(total) / window_s;
}

server_metrics::server_metrics() = default;

void server_metrics::tokens_generated(std::size_t n, token_rate::clock::time_point now) noexcept {
  generated_tokens_ += n;
  rate_.add(n, now);
}

std::string server_metrics::render(const server_gauges& server, const engine_gauges& engine) const {
  std::string out;
  out.reserve(8192);
  header(out, "cobatch_requests_total", "HTTP requests answered, by outcome.", "counter");
  for (std::size_t i = 0; i < outcomes_.size(); ++i) {
    out += "cobatch_requests_total{outcome=\"";
    out += outcome_label(static_cast<request_outcome>(i));
    out += "\"} ";
    append_number(out, outcomes_[i]);
    out += '\n';
  }
  scalar(out, "cobatch_queue_depth",
         "Completion requests waiting for admission: in the engine's queue or on their way to it.",
         "gauge", static_cast<std::uint64_t>(server.waiting_room));
  scalar(out, "cobatch_engine_waiting_requests", "Requests in the engine's waiting queue.", "gauge",
         static_cast<std::uint64_t>(engine.waiting));
  scalar(out, "cobatch_running_requests", "Requests in the engine's running batch.", "gauge",
         static_cast<std::uint64_t>(engine.running));
  scalar(out, "cobatch_in_flight_requests", "Completion requests not yet answered.", "gauge",
         static_cast<std::uint64_t>(server.in_flight));
  scalar(out, "cobatch_kv_pages_in_use", "KV cache pages held by requests.", "gauge",
         static_cast<std::uint64_t>(engine.kv_pages_in_use));
  scalar(out, "cobatch_kv_pages_total", "KV cache pages in the pool.", "gauge",
         static_cast<std::uint64_t>(engine.kv_pages_total));
  scalar(out, "cobatch_open_connections", "Open HTTP connections.", "gauge",
         static_cast<std::uint64_t>(server.open_connections));
  scalar(out, "cobatch_generated_tokens_total", "Tokens generated and sent to clients.", "counter",
         generated_tokens_);
  scalar(out, "cobatch_tokens_per_second", "Generated tokens per second over the last 4.9 s.",
         "gauge", rate_.per_second(token_rate::clock::now()));
  scalar(out, "cobatch_engine_steps_total", "Engine steps run.", "counter", engine.steps);
  scalar(out, "cobatch_engine_preemptions_total",
         "Running requests preempted for lack of KV pages (recomputed later).", "counter",
         engine.preemptions);
  time_to_first_token.render(out, "cobatch_time_to_first_token_seconds",
                             "From a completion request's arrival to its first generated token.");
  time_per_output_token.render(out, "cobatch_time_per_output_token_seconds",
                               "Between consecutive generated tokens of one request.");
  step_time.render(out, "cobatch_step_time_seconds", "Wall time of one engine step.");
  return out;
}

}  // namespace cobatch::server
