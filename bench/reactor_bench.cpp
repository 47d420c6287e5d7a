// The completion reactor's cost against the number of pending waits, on its
// ordered path (fences that state their place on a stream: only the oldest
// pending wait of each stream is queried) beside its unordered path (every
// pending fence queried on every sweep), in the same run. The fences are one
// atomic load each, so the figures are the reactor's own cost; a CUDA event
// query costs far more, which the unordered path pays per pending wait.
#include "cobatch/coro/completion_reactor.hpp"
#include "cobatch/coro/fence_order.hpp"
#include "cobatch/coro/run_loop.hpp"

#include <benchmark/benchmark.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <system_error>

using namespace cobatch;

namespace {

constexpr std::size_t stream_count = 8;

// A fence set by hand, as a GPU would complete one; no order claimed.
class unordered_fence {
 public:
  explicit unordered_fence(coro::fence_order) {}
  coro::fence_status query() const noexcept {
    return state_->load(std::memory_order_acquire) ? coro::fence_status::ready() : coro::fence_status::pending();
  }
  void signal() const noexcept { state_->store(true, std::memory_order_release); }

 private:
  std::shared_ptr<std::atomic<bool>> state_ = std::make_shared<std::atomic<bool>>(false);
};

// The same fence, claiming its place on a stream (the benchmark signals the
// fences of a stream in order, as the stream would).
class ordered_fence : public unordered_fence {
 public:
  explicit ordered_fence(coro::fence_order order) : unordered_fence(order), order_(order) {}
  coro::fence_order order() const noexcept { return order_; }

 private:
  coro::fence_order order_;
};

static_assert(coro::ordered_fence<ordered_fence>);
static_assert(!coro::ordered_fence<unordered_fence>);

// `pending` waits spread round-robin over 8 streams, each stream's fences in
// recording order; the reactor has taken them all in. The reactor is attached
// to the loop, which polls it as an engine's loop does.
template <typename Fence>
class pending_waits {
 public:
  explicit pending_waits(std::size_t pending) {
    loop_.attach(reactor_);
    for (auto& id : ids_) id = coro::new_order_stream();
    for (std::size_t i = 0; i < pending; ++i) add(i % stream_count);
    reactor_.poll();
  }
  pending_waits(const pending_waits&) = delete;
  pending_waits& operator=(const pending_waits&) = delete;
  ~pending_waits() {
    for (auto& q : fences_) {
      for (auto& f : q) f.signal();
    }
    while (loop_.poll() > 0 || reactor_.pending() > 0) {
    }
    loop_.detach();  // the reactor goes first
  }

  // A new wait on the next fence of stream `s`.
  void add(std::size_t s) {
    fences_[s].emplace_back(coro::fence_order{ids_[s], ++positions_[s]});
    reactor_.async_wait(fences_[s].back(), [this](std::error_code ec) { delivered_ += !ec; });
  }
  // The oldest pending fence of stream `s` is reached.
  void complete_oldest(std::size_t s) {
    fences_[s].front().signal();
    fences_[s].pop_front();
  }

  coro::completion_reactor& reactor() noexcept { return reactor_; }
  coro::run_loop& loop() noexcept { return loop_; }
  std::size_t delivered() const noexcept { return delivered_; }

 private:
  coro::run_loop loop_;
  coro::completion_reactor reactor_{loop_.get_executor()};
  std::array<std::uint64_t, stream_count> ids_{};
  std::array<std::uint64_t, stream_count> positions_{};
  std::array<std::deque<Fence>, stream_count> fences_;
  std::size_t delivered_ = 0;
};

// One sweep that finds nothing done: what every poll of an idle-but-waiting
// engine costs.
template <typename Fence>
void BM_reactor_sweep(benchmark::State& state, std::size_t pending) {
  pending_waits<Fence> waits(pending);
  for (auto _ : state) benchmark::DoNotOptimize(waits.reactor().poll());
  if (waits.reactor().pending() != pending) state.SkipWithError("a wait completed during the sweeps");
}

// Delivering one in-order completion with `pending` waits in flight: the
// oldest fence of one stream is reached, the loop's poll sweeps the reactor
// once and runs the handler it delivered, and a new wait on that stream
// keeps the count steady.
template <typename Fence>
void BM_reactor_completion(benchmark::State& state, std::size_t pending) {
  pending_waits<Fence> waits(pending);
  std::size_t s = 0;
  for (auto _ : state) {
    waits.complete_oldest(s);
    waits.loop().poll();
    waits.add(s);
    s = (s + 1) % stream_count;
  }
  if (waits.delivered() != static_cast<std::size_t>(state.iterations())) {
    state.SkipWithError("not every completion was delivered by its sweep");
  }
}

// Registered by name, one benchmark per size, so that summarize.py can pick
// each figure by name.
[[maybe_unused]] const bool registered = [] {
  const std::pair<const char*, std::size_t> sizes[] = {{"10", 10}, {"1k", 1000}, {"10k", 10000}};
  for (const auto& [suffix, pending] : sizes) {
    const std::string n = suffix;
    benchmark::RegisterBenchmark(("BM_reactor_sweep_ordered_" + n).c_str(), BM_reactor_sweep<ordered_fence>, pending)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("BM_reactor_sweep_unordered_" + n).c_str(), BM_reactor_sweep<unordered_fence>,
                                 pending)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("BM_reactor_completion_ordered_" + n).c_str(),
                                 BM_reactor_completion<ordered_fence>, pending)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("BM_reactor_completion_unordered_" + n).c_str(),
                                 BM_reactor_completion<unordered_fence>, pending)
        ->UseRealTime();
  }
  return true;
}();

}  // namespace
