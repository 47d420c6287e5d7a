// Overlap of micro-batches' compute and communication on the host backend:
// the coroutine scheduler against the thread-per-micro-batch pattern of the
// seeds and of vLLM (threads handing the CPU to each other), on the same
// schedule, streams and stages.
//
// Each of N micro-batches runs L layers; a layer is a compute stage on the
// compute stream, a switch to the comm stream (device-side join), a comm stage,
// and a switch back. Stages hold their stream for a calibrated time without
// holding a host core (a timed sleep on the stream's worker, as a kernel or a
// collective holds the GPU and not the CPU), or, in the *_busy variant, by
// spinning the worker's core.
//
// Figures (summary.json, via bench/summarize.py):
//   efficiency  = lower bound of the makespan / measured makespan, where the
//                 bound is max(N*L*c + m, c + N*L*m): the busier stream's work
//                 plus the stage that cannot overlap it;
//   host_cpu_us = CPU time per step of the threads that drive the schedule
//                 (the stream workers stand for the GPU and are not counted).
#include "cobatch/coro/completion_reactor.hpp"
#include "cobatch/coro/run_loop.hpp"
#include "cobatch/coro/sync_wait.hpp"
#include "cobatch/coro/use_task.hpp"
#include "cobatch/engine/ubatch/ubatch_scheduler.hpp"
#include "cobatch/gpu/host/host_device.hpp"

#include <benchmark/benchmark.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <semaphore>
#include <thread>
#include <vector>

using namespace cobatch;

namespace {

using clock_type = std::chrono::steady_clock;

constexpr int layers = 4;
constexpr std::chrono::microseconds unit{3000};  // one part of the compute:comm ratio

enum class stage_kind { sleeping, busy };

struct config {
  int micro_batches;
  int compute_parts;
  int comm_parts;
  std::chrono::microseconds compute() const { return unit * compute_parts; }
  std::chrono::microseconds comm() const { return unit * comm_parts; }
  double lower_bound_ms() const {
    const double c = std::chrono::duration<double, std::milli>(compute()).count();
    const double m = std::chrono::duration<double, std::milli>(comm()).count();
    const double work = static_cast<double>(micro_batches) * layers;
    return std::max(work * c + m, c + work * m);
  }
};

config config_of(const benchmark::State& state) {
  return {static_cast<int>(state.range(0)), static_cast<int>(state.range(1)), static_cast<int>(state.range(2))};
}

// Device work of a known duration on the stream's worker thread. Timer slack
// is cut to 1 ns on that thread, so that a few-millisecond sleep ends within
// tens of microseconds of its deadline (the default 50 us slack would add up).
void enqueue_stage(gpu::stream_ref s, std::chrono::microseconds duration, stage_kind kind) {
  s.enqueue([duration, kind] {
    static thread_local const bool slack_set = [] {
      prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
      return true;
    }();
    (void)slack_set;
    const auto deadline = clock_type::now() + duration;
    if (kind == stage_kind::sleeping) {
      std::this_thread::sleep_until(deadline);
    } else {
      while (clock_type::now() < deadline) {
      }
    }
  });
}

double thread_cpu_us(pthread_t thread) {
  clockid_t id;
  timespec ts{};
  if (pthread_getcpuclockid(thread, &id) != 0 || clock_gettime(id, &ts) != 0) return 0.0;
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) * 1e-3;
}

void publish(benchmark::State& state, const config& cfg, double makespan_ms_total, double cpu_us_total) {
  const double steps = static_cast<double>(state.iterations());
  const double makespan = makespan_ms_total / steps;
  state.counters["makespan_ms"] = makespan;
  state.counters["lower_bound_ms"] = cfg.lower_bound_ms();
  state.counters["efficiency"] = cfg.lower_bound_ms() / makespan;
  state.counters["host_cpu_us"] = cpu_us_total / steps;
}

// The host backend wakes the loop when a fence it polls is signalled, so the
// loop can sleep long between polls without adding latency (on CUDA, whose
// events wake no one, the default backoff's short sleeps are what bound it).
coro::run_loop::options kicked_loop_options() {
  coro::run_loop::options o;
  o.backoff.spin_rounds = 64;
  o.backoff.yield_rounds = 0;
  o.backoff.min_sleep = std::chrono::milliseconds(200);
  o.backoff.max_sleep = std::chrono::milliseconds(200);
  return o;
}

void run_coroutines(benchmark::State& state, stage_kind kind) {
  const config cfg = config_of(state);
  coro::run_loop loop(kicked_loop_options());
  coro::completion_reactor reactor(loop.get_executor());
  loop.attach(reactor);
  gpu::host::host_device device(reactor);
  gpu::stream_pool pool(device, {.compute_streams = 1, .communication_streams = 1});
  engine::ubatch_scheduler scheduler(device, pool);

  auto micro_batch = [&](engine::ubatch_context& ctx) -> coro::task<void> {
    for (int layer = 0; layer < layers; ++layer) {
      enqueue_stage(ctx.current_stream(), cfg.compute(), kind);
      co_await ctx.switch_to_comm();
      enqueue_stage(ctx.current_stream(), cfg.comm(), kind);
      co_await ctx.switch_to_compute();
    }
  };
  auto step = [&]() -> coro::task<void> {
    co_await scheduler.run(cfg.micro_batches, micro_batch);
    co_await scheduler.compute_stream(0).async_wait(coro::use_task);
  };

  coro::sync_wait(loop, step());  // warm-up: first-touch costs are not the schedule's
  const pthread_t self = pthread_self();
  double makespan_total = 0.0;
  double cpu_total = 0.0;
  for (auto _ : state) {
    const double cpu0 = thread_cpu_us(self);
    const auto t0 = clock_type::now();
    coro::sync_wait(loop, step());
    makespan_total += std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
    cpu_total += thread_cpu_us(self) - cpu0;
  }
  publish(state, cfg, makespan_total, cpu_total);
}

// One thread per micro-batch; only the thread whose turn it is runs, and a
// switch hands the turn to the next thread (a semaphore each: the cheapest
// hand-off threads have; vLLM uses threading.Event, the seeds a barrier).
class thread_schedule {
 public:
  thread_schedule(const config& cfg, gpu::host::host_device& device, gpu::stream_ref compute,
                  gpu::stream_ref comm, stage_kind kind)
      : cfg_(cfg), compute_(compute), comm_(comm), kind_(kind) {
    const int n = cfg.micro_batches;
    turn_ = std::vector<std::unique_ptr<std::binary_semaphore>>(n);
    for (auto& t : turn_) t = std::make_unique<std::binary_semaphore>(0);
    finished_.assign(n, 0);
    for (int i = 0; i < n; ++i) {
      compute_done_.push_back(device.make_event());
      comm_done_.push_back(device.make_event());
    }
    for (int i = 0; i < n; ++i) threads_.emplace_back([this, i] { thread_main(i); });
  }
  ~thread_schedule() {
    stop_ = true;
    for (auto& t : turn_) t->release();
    for (auto& t : threads_) t.join();
  }

  /// One step: runs every micro-batch's layers in turn, then waits (blocking,
  /// as cudaStreamSynchronize with blocking sync) for the streams.
  void step() {
    std::fill(finished_.begin(), finished_.end(), 0);
    turn_[0]->release();
    done_.acquire();
    comm_.record(comm_done_[0]);
    compute_.wait(comm_done_[0]);
    std::promise<void> drained;
    compute_.enqueue([&drained] { drained.set_value(); });
    drained.get_future().wait();
  }

  double cpu_us() {
    double total = thread_cpu_us(pthread_self());
    for (auto& t : threads_) total += thread_cpu_us(t.native_handle());
    return total;
  }

 private:
  void thread_main(int i) {
    for (;;) {
      turn_[i]->acquire();
      if (stop_) return;
      for (int layer = 0; layer < layers; ++layer) {
        enqueue_stage(compute_, cfg_.compute(), kind_);
        compute_.record(compute_done_[i]);
        if (!hand_over(i)) return;
        comm_.wait(compute_done_[i]);
        enqueue_stage(comm_, cfg_.comm(), kind_);
        comm_.record(comm_done_[i]);
        if (!hand_over(i)) return;
        compute_.wait(comm_done_[i]);
      }
      finished_[i] = 1;
      const int next = next_after(i);
      if (next < 0) {
        done_.release();
      } else {
        turn_[next]->release();
      }
    }
  }
  bool hand_over(int i) {
    const int next = next_after(i);
    if (next != i) {
      turn_[next]->release();
      turn_[i]->acquire();
    }
    return !stop_;
  }
  int next_after(int i) const {
    const int n = cfg_.micro_batches;
    for (int k = 1; k <= n; ++k) {
      const int j = (i + k) % n;
      if (!finished_[j]) return j;
    }
    return -1;
  }

  config cfg_;
  gpu::stream_ref compute_;
  gpu::stream_ref comm_;
  stage_kind kind_;
  std::vector<std::unique_ptr<std::binary_semaphore>> turn_;
  std::binary_semaphore done_{0};
  std::vector<char> finished_;  // written by the thread whose turn it is
  std::vector<gpu::event> compute_done_;
  std::vector<gpu::event> comm_done_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

void run_threads(benchmark::State& state, stage_kind kind) {
  const config cfg = config_of(state);
  coro::run_loop loop;
  coro::completion_reactor reactor(loop.get_executor());
  gpu::host::host_device device(reactor);
  auto compute = device.make_stream({gpu::stream_priority::normal});
  auto comm = device.make_stream({gpu::stream_priority::high});
  thread_schedule schedule(cfg, device, compute, comm, kind);
  schedule.step();  // warm-up

  double makespan_total = 0.0;
  double cpu_total = 0.0;
  for (auto _ : state) {
    const double cpu0 = schedule.cpu_us();
    const auto t0 = clock_type::now();
    schedule.step();
    makespan_total += std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
    cpu_total += schedule.cpu_us() - cpu0;
  }
  publish(state, cfg, makespan_total, cpu_total);
}

void BM_overlap_coroutine(benchmark::State& state) { run_coroutines(state, stage_kind::sleeping); }
void BM_overlap_threads(benchmark::State& state) { run_threads(state, stage_kind::sleeping); }
void BM_overlap_coroutine_busy(benchmark::State& state) { run_coroutines(state, stage_kind::busy); }
void BM_overlap_threads_busy(benchmark::State& state) { run_threads(state, stage_kind::busy); }

// Each configuration runs this many times whatever --benchmark_repetitions
// says, and bench/summarize.py reports the median: a single run of the
// smallest configuration (N = 2, 1:1) varies by a few percent from run to run
// on a shared machine, the median of several does not.
constexpr int overlap_repetitions = 5;

// N micro-batches x compute:comm parts.
void overlap_configs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"N", "compute", "comm"});
  for (int n : {2, 4, 8}) {
    b->Args({n, 1, 1});
    b->Args({n, 2, 1});
    b->Args({n, 1, 2});
  }
  b->Iterations(4)->Repetitions(overlap_repetitions)->ReportAggregatesOnly(false);
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}
void busy_configs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"N", "compute", "comm"});
  for (int n : {2, 8}) {
    b->Args({n, 1, 1});
    b->Args({n, 2, 1});
    b->Args({n, 1, 2});
  }
  b->Iterations(4)->Repetitions(overlap_repetitions)->ReportAggregatesOnly(false);
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

BENCHMARK(BM_overlap_coroutine)->Apply(overlap_configs);
BENCHMARK(BM_overlap_threads)->Apply(overlap_configs);
BENCHMARK(BM_overlap_coroutine_busy)->Apply(busy_configs);
BENCHMARK(BM_overlap_threads_busy)->Apply(busy_configs);

}  // namespace
