#include "cobatch/gpu/cuda/graph_update.hpp"

#include "cobatch/gpu/cuda/probe_kernels.hpp"
#include "cuda_fixture.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <cstring>

using namespace cobatch;
using cuda_test::fixture;
namespace probe = gpu::cuda::probe;

namespace {
constexpr std::size_t n = 4096;
constexpr std::uint32_t iterations = 500;

// One step over persistent buffers: H2D, a compute kernel, a side stream that
// scales a copy (forked and joined through events, so the capture spans two
// streams), D2H of both results, and a host function that counts runs.
struct step {
  gpu::stream_ref main;
  gpu::stream_ref side;
  gpu::event fork;
  gpu::event join;
  gpu::cuda::device_buffer in, mid, a, b;
  gpu::cuda::allocation host_in = cuda_test::pinned_floats(n);
  gpu::cuda::allocation host_a = cuda_test::pinned_floats(n);
  gpu::cuda::allocation host_b = cuda_test::pinned_floats(n);
  std::atomic<int> runs{0};

  step(gpu::cuda::cuda_device& dev, gpu::stream_ref m, gpu::stream_ref s)
      : main(m), side(s), fork(dev.make_event()), join(dev.make_event()), in(n * sizeof(float), m),
        mid(n * sizeof(float), m), a(n * sizeof(float), m), b(n * sizeof(float), m) {}

  void enqueue(float scale_a, float scale_b) {
    gpu::cuda::copy_async(in.data(), host_in.data(), n * sizeof(float), main);
    probe::fma_chain(in.as<float>(), mid.as<float>(), n, iterations, main);
    main.record(fork);
    side.wait(fork);
    probe::scale_copy(mid.as<float>(), b.as<float>(), n, scale_b, side);
    side.record(join);
    probe::scale_copy(mid.as<float>(), a.as<float>(), n, scale_a, main);
    main.wait(join);
    gpu::cuda::copy_async(host_a.data(), a.data(), n * sizeof(float), main);
    gpu::cuda::copy_async(host_b.data(), b.data(), n * sizeof(float), main);
    main.enqueue([this] { runs.fetch_add(1); });
  }

  void fresh_input(unsigned seed) {
    const auto v = cuda_test::random_floats(n, seed);
    std::memcpy(host_in.data(), v.data(), n * sizeof(float));
  }
  std::vector<float> result_a() const { return {host_a.as<float>(), host_a.as<float>() + n}; }
  std::vector<float> result_b() const { return {host_b.as<float>(), host_b.as<float>() + n}; }
};
}  // namespace

TEST_CASE("a captured two-stream graph replays like eager execution on fresh inputs, also after update",
          "[cuda][graph]") {
  fixture f;
  auto main = f.dev.make_stream();
  auto side = f.dev.make_stream();
  step st(f.dev, main, side);
  auto wait_main = [&]() {
    auto body = [&]() -> coro::task<void> { co_await main.async_wait(coro::use_task); };
    coro::sync_wait(f.loop, body());
  };
  wait_main();  // the buffers exist before capture starts

  main.ref().begin_capture();
  CHECK(main.ref().capturing());
  st.enqueue(2.0f, -1.0f);
  auto g = main.ref().end_capture();
  CHECK_FALSE(main.ref().capturing());
  CHECK_FALSE(side.ref().capturing());
  REQUIRE(g.node_count() >= 7);  // 3 copies, 3 kernels, 1 host function
  auto exec = g.instantiate();
  CHECK(st.runs.load() == 0);  // captured, not run

  auto compare = [&](float scale_a, float scale_b, unsigned seed) {
    st.fresh_input(seed);
    st.enqueue(scale_a, scale_b);
    wait_main();
    const auto eager_a = st.result_a();
    const auto eager_b = st.result_b();
    std::memset(st.host_a.data(), 0, n * sizeof(float));
    std::memset(st.host_b.data(), 0, n * sizeof(float));
    exec.launch(main);
    wait_main();
    CHECK(st.result_a() == eager_a);
    CHECK(st.result_b() == eager_b);
    // And both agree with the host's arithmetic.
    const float x = st.host_in.as<float>()[7];
    CHECK(eager_a[7] == scale_a * probe::expected_fma(x, iterations));
  };
  for (unsigned seed = 10; seed < 13; ++seed) compare(2.0f, -1.0f, seed);
  CHECK(st.runs.load() == 6);  // 3 eager + 3 replays: the host node runs at each replay

  // Same topology, other parameters: patched in place.
  main.ref().begin_capture();
  st.enqueue(5.0f, 0.5f);
  auto g2 = main.ref().end_capture();
  CHECK(gpu::cuda::update(exec, g2) == gpu::cuda::graph_update_result::updated_in_place);
  for (unsigned seed = 20; seed < 22; ++seed) compare(5.0f, 0.5f, seed);

  // Another topology: instantiated afresh, still correct.
  main.ref().begin_capture();
  probe::scale_copy(st.in.as<float>(), st.a.as<float>(), n, 3.0f, main);
  gpu::cuda::copy_async(st.host_a.data(), st.a.data(), n * sizeof(float), main);
  auto g3 = main.ref().end_capture();
  CHECK(gpu::cuda::update(exec, g3) == gpu::cuda::graph_update_result::reinstantiated);
  st.fresh_input(30);
  gpu::cuda::copy_async(st.in.data(), st.host_in.data(), n * sizeof(float), main);
  exec.launch(main);
  wait_main();
  CHECK(st.host_a.as<float>()[5] == 3.0f * st.host_in.as<float>()[5]);
}
