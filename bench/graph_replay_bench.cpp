// Host CPU time to launch a 64-operation step eagerly versus replaying it as
// a captured graph, host backend. Only the launching thread's CPU time while
// it enqueues is counted; waiting for the step to finish is left out.
#include "cobatch/coro/completion_reactor.hpp"
#include "cobatch/coro/run_loop.hpp"
#include "cobatch/gpu/host/host_device.hpp"

#include <benchmark/benchmark.h>

#include <ctime>
#include <semaphore>

using namespace cobatch;

namespace {

constexpr int ops_per_step = 64;

double thread_cpu_ns() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

struct step_fixture {
  coro::run_loop loop;
  coro::completion_reactor reactor{loop.get_executor()};
  gpu::host::host_device dev{reactor};
  gpu::stream stream = dev.make_stream();
  std::binary_semaphore finished{0};
  float data[ops_per_step] = {};

  // One step: 64 small dependent operations, as a layer-by-layer decode step
  // launches many small kernels.
  void enqueue_step() {
    for (int i = 0; i < ops_per_step; ++i) {
      stream.enqueue([this, i] { data[i] = data[i] * 0.5f + 1.0f; });
    }
  }
};

void BM_launch_eager_64(benchmark::State& state) {
  step_fixture f;
  double cpu = 0;
  for (auto _ : state) {
    const double t0 = thread_cpu_ns();
    f.enqueue_step();
    cpu += thread_cpu_ns() - t0;
    f.stream.enqueue([&f] { f.finished.release(); });
    f.finished.acquire();
  }
  state.counters["launch_cpu_ns"] = cpu / static_cast<double>(state.iterations());
}
BENCHMARK(BM_launch_eager_64);

void BM_launch_graph_64(benchmark::State& state) {
  step_fixture f;
  f.stream.ref().begin_capture();
  f.enqueue_step();
  auto exec = f.stream.ref().end_capture().instantiate();
  double cpu = 0;
  for (auto _ : state) {
    const double t0 = thread_cpu_ns();
    exec.launch(f.stream);
    cpu += thread_cpu_ns() - t0;
    f.stream.enqueue([&f] { f.finished.release(); });
    f.finished.acquire();
  }
  state.counters["launch_cpu_ns"] = cpu / static_cast<double>(state.iterations());
}
BENCHMARK(BM_launch_graph_64);

}  // namespace
