// Resumption latency, micro-batch switch cost and idle CPU of the coroutine
// core, each beside the thread-based pattern it replaces, in the same run.
#include "cobatch/coro/completion_reactor.hpp"
#include "cobatch/coro/run_loop.hpp"
#include "cobatch/coro/spawn.hpp"
#include "cobatch/coro/task.hpp"
#include "cobatch/coro/use_task.hpp"

#include <asio/awaitable.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/use_awaitable.hpp>
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <memory>
#include <mutex>
#include <pthread.h>
#include <thread>
#include <vector>

using namespace cobatch;
using clock_type = std::chrono::steady_clock;

namespace {

// A fence the benchmark thread signals by hand, as a GPU would.
class bench_fence {
 public:
  coro::fence_status query() const noexcept {
    return state_->load(std::memory_order_acquire) ? coro::fence_status::ready() : coro::fence_status::pending();
  }
  void signal() const noexcept { state_->store(true, std::memory_order_release); }

 private:
  std::shared_ptr<std::atomic<bool>> state_ = std::make_shared<std::atomic<bool>>(false);
};

void publish_percentiles(benchmark::State& state, std::vector<double>& samples) {
  if (samples.empty()) return;
  std::sort(samples.begin(), samples.end());
  state.counters["median_ns"] = samples[samples.size() / 2];
  state.counters["p99_ns"] = samples[std::min(samples.size() - 1, samples.size() * 99 / 100)];
}

// An iteration is a round trip (A -> B -> A): two switches.
void publish_per_switch(benchmark::State& state, clock_type::duration elapsed) {
  const double switches = 2.0 * static_cast<double>(state.iterations());
  if (switches > 0) {
    state.counters["per_switch_ns"] = std::chrono::duration<double, std::nano>(elapsed).count() / switches;
  }
}

// Host fence signalled on another thread -> awaiting coroutine resumed on its
// run_loop, which polls the reactor while it has nothing else to do.
void BM_resume_reactor(benchmark::State& state) {
  coro::run_loop loop;
  coro::completion_reactor reactor(loop.get_executor());
  loop.attach(reactor);

  struct shared_state {
    std::atomic<int> armed{-1};  // index of the fence the coroutine waits on
    std::vector<bench_fence> fences;
    std::vector<clock_type::time_point> signalled;
    std::vector<double> latency_ns;
    std::atomic<bool> stop{false};
  } s;
  constexpr int max_samples = 1 << 16;
  s.fences.resize(max_samples + 1);
  s.signalled.resize(max_samples + 1);
  s.latency_ns.reserve(max_samples);

  auto waiter = [&]() -> coro::task<void> {
    for (int i = 0; i < max_samples && !s.stop.load(std::memory_order_relaxed); ++i) {
      auto op = reactor.async_wait(s.fences[i], coro::use_task);
      s.armed.store(i, std::memory_order_release);
      co_await std::move(op);
      const auto resumed = clock_type::now();
      s.latency_ns.push_back(std::chrono::duration<double, std::nano>(resumed - s.signalled[i]).count());
    }
    s.armed.store(-2, std::memory_order_release);
  };
  std::thread engine([&] {
    coro::spawn(loop.get_executor(), waiter(), [](std::exception_ptr) {});
    loop.run();
  });

  int i = 0;
  for (auto _ : state) {
    // Signal only once the wait is registered with the reactor, so that the
    // figure is signal -> resume and not the coroutine's own set-up.
    while (s.armed.load(std::memory_order_acquire) != i || reactor.pending() == 0) {
    }
    s.signalled[i] = clock_type::now();
    s.fences[i].signal();
    ++i;
    if (i == max_samples) {
      state.SkipWithError("sample buffer full");
      break;
    }
  }
  s.stop.store(true);
  // Let the coroutine finish its last wait.
  while (s.armed.load(std::memory_order_acquire) != -2) {
    const int armed = s.armed.load(std::memory_order_acquire);
    if (armed >= 0) s.fences[armed].signal();
  }
  engine.join();
  publish_percentiles(state, s.latency_ns);
}
BENCHMARK(BM_resume_reactor)->Iterations(20000)->UseRealTime();

// The same hand-off through a condition variable waking a blocked thread.
void BM_resume_condvar(benchmark::State& state) {
  std::mutex mutex;
  std::condition_variable cv;
  int generation = 0;
  bool waiting = false;
  bool stop = false;
  clock_type::time_point signalled;
  std::vector<double> latency_ns;
  latency_ns.reserve(1 << 16);

  std::thread waiter([&] {
    std::unique_lock lock(mutex);
    int seen = 0;
    for (;;) {
      waiting = true;
      cv.notify_all();
      cv.wait(lock, [&] { return generation != seen || stop; });
      if (stop) return;
      seen = generation;
      waiting = false;
      latency_ns.push_back(std::chrono::duration<double, std::nano>(clock_type::now() - signalled).count());
    }
  });
  for (auto _ : state) {
    std::unique_lock lock(mutex);
    cv.wait(lock, [&] { return waiting; });
    // Give the waiter time to block in the kernel, as a thread waiting on GPU
    // work would be; otherwise this measures a spin, not a wake-up.
    lock.unlock();
    std::this_thread::sleep_for(std::chrono::microseconds(20));
    lock.lock();
    signalled = clock_type::now();
    ++generation;
    waiting = false;
    cv.notify_all();
  }
  {
    std::lock_guard lock(mutex);
    stop = true;
  }
  cv.notify_all();
  waiter.join();
  publish_percentiles(state, latency_ns);
}
BENCHMARK(BM_resume_condvar)->Iterations(5000)->UseRealTime();

// One switch between two micro-batch coroutines on one thread. An iteration
// is a round trip (A -> B -> A): two switches.
void BM_switch_coroutine(benchmark::State& state) {
  coro::run_loop loop;
  bool done = false;
  std::int64_t other_switches = 0;
  auto driver = [&]() -> coro::task<void> {
    for (auto _ : state) co_await loop.yield();
    done = true;
  };
  auto partner = [&]() -> coro::task<void> {
    while (!done) {
      co_await loop.yield();
      ++other_switches;
    }
  };
  coro::spawn(loop.get_executor(), driver(), [](std::exception_ptr) {});
  coro::spawn(loop.get_executor(), partner(), [](std::exception_ptr) {});
  const auto started = clock_type::now();
  loop.run();
  benchmark::DoNotOptimize(other_switches);
  publish_per_switch(state, clock_type::now() - started);
}
BENCHMARK(BM_switch_coroutine)->UseRealTime();

// The same switch with asio::awaitable coroutines on an io_context: each
// yield is a post to the context and a resumption through Asio's machinery.
void BM_switch_asio_awaitable(benchmark::State& state) {
  asio::io_context ctx(1);
  bool done = false;
  auto driver = [&]() -> asio::awaitable<void> {
    for (auto _ : state) co_await asio::post(ctx, asio::use_awaitable);
    done = true;
  };
  auto partner = [&]() -> asio::awaitable<void> {
    while (!done) co_await asio::post(ctx, asio::use_awaitable);
  };
  asio::co_spawn(ctx, driver(), asio::detached);
  asio::co_spawn(ctx, partner(), asio::detached);
  const auto started = clock_type::now();
  ctx.run();
  publish_per_switch(state, clock_type::now() - started);
}
BENCHMARK(BM_switch_asio_awaitable)->UseRealTime();

// vLLM's pattern: one thread per micro-batch, handing the CPU to the other
// through events (a mutex and condition variable each, as threading.Event).
void BM_switch_barrier(benchmark::State& state) {
  struct thread_event {
    std::mutex m;
    std::condition_variable cv;
    bool set = false;
    void signal() {
      {
        std::lock_guard lock(m);
        set = true;
      }
      cv.notify_one();
    }
    void wait() {
      std::unique_lock lock(m);
      cv.wait(lock, [&] { return set; });
      set = false;
    }
  };
  thread_event to_partner, to_driver;
  std::atomic<bool> done{false};
  std::thread partner([&] {
    for (;;) {
      to_partner.wait();
      if (done.load(std::memory_order_acquire)) return;
      to_driver.signal();
    }
  });
  const auto started = clock_type::now();
  for (auto _ : state) {
    to_partner.signal();
    to_driver.wait();
  }
  publish_per_switch(state, clock_type::now() - started);
  done.store(true, std::memory_order_release);
  to_partner.signal();
  partner.join();
}
BENCHMARK(BM_switch_barrier)->UseRealTime();

double thread_cpu_seconds(pthread_t thread) {
  clockid_t id;
  timespec ts{};
  if (pthread_getcpuclockid(thread, &id) != 0 || clock_gettime(id, &ts) != 0) return 0.0;
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// CPU used over one second by an engine with nothing to do: a run_loop kept
// alive by outstanding work, with its reactor attached and nothing pending.
void BM_idle_cpu(benchmark::State& state) {
  for (auto _ : state) {
    coro::run_loop loop;
    coro::completion_reactor reactor(loop.get_executor());
    loop.attach(reactor);
    auto work = std::make_unique<decltype(asio::prefer(loop.get_executor(), asio::execution::outstanding_work.tracked))>(
        asio::prefer(loop.get_executor(), asio::execution::outstanding_work.tracked));
    std::thread engine([&] { loop.run(); });
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let it settle into idle
    const double cpu0 = thread_cpu_seconds(engine.native_handle());
    const auto wall0 = clock_type::now();
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const double cpu1 = thread_cpu_seconds(engine.native_handle());
    const double wall = std::chrono::duration<double>(clock_type::now() - wall0).count();
    state.counters["cpu_percent"] = 100.0 * (cpu1 - cpu0) / wall;
    asio::post(loop.get_executor(), [&] { work.reset(); });
    engine.join();
  }
}
BENCHMARK(BM_idle_cpu)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
