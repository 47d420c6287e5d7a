// Built against an installed cobatch: proves the installed headers and
// exported targets are enough to compile, link and run the engine: a batch is
// sliced into two micro-batches that run interleaved on the host backend.
#include <cobatch/coro/completion_reactor.hpp>
#include <cobatch/coro/run_loop.hpp>
#include <cobatch/coro/sync_wait.hpp>
#include <cobatch/coro/task.hpp>
#include <cobatch/engine/ubatch/ubatch_scheduler.hpp>
#include <cobatch/engine/ubatch/ubatch_slicing.hpp>
#include <cobatch/gpu/host/host_device.hpp>
#include <cobatch/gpu/stream_pool.hpp>

#include <cstdint>
#include <cstdio>
#include <vector>

// The package must give consumers the Asio configuration cobatch was built
// with (see cmake/cobatch_dependencies.cmake).
#if !defined(ASIO_STANDALONE) || !defined(ASIO_NO_DEPRECATED) || !defined(ASIO_DISABLE_STD_ALIGNED_ALLOC)
#error "the cobatch package does not define the Asio macros its libraries were built with"
#endif

int main() {
  using namespace cobatch;
  // Three requests of 4, 3 and 5 query tokens.
  const std::vector<std::int32_t> query_start_loc{0, 4, 7, 12};
  const std::vector<std::int32_t> seq_lens{10, 3, 9};
  const engine::batch_view batch{query_start_loc, seq_lens, 12};
  engine::slice_policy policy;
  policy.thresholds.prefill_tokens = 1;
  const engine::ubatch_plan plan = engine::slice_batch(batch, {2, 12}, policy);

  coro::run_loop loop;
  coro::completion_reactor reactor{loop.get_executor()};
  gpu::host::host_device device{reactor};
  gpu::stream_pool pool{device};
  engine::ubatch_scheduler scheduler{device, pool};
  loop.attach(reactor);

  auto body = [](engine::ubatch_context& ctx) -> coro::task<std::int32_t> {
    const std::int32_t tokens = ctx.slice().real_tokens();
    co_await ctx.switch_to_comm();
    co_await ctx.switch_to_compute();
    co_return tokens;
  };
  const std::vector<std::int32_t> tokens = coro::sync_wait(loop, scheduler.run(plan, body));
  std::printf("cobatch test_package: %zu micro-batches of %d and %d tokens\n", tokens.size(),
              tokens.size() > 0 ? tokens[0] : -1, tokens.size() > 1 ? tokens[1] : -1);
  return tokens.size() == 2 && tokens[0] + tokens[1] == 12 ? 0 : 1;
}
