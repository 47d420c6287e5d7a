#include "cobatch/engine/attention/ubatch_attention.hpp"

namespace cobatch::engine {

coro::task<void> run_attention(ubatch_context& ctx, batch_attention& attn, const attention_plan& plan,
                               attention_io io) {
  attn.check(plan, io);  // bad input throws here, before any switch or enqueue
  const std::int32_t count = attn.phase_count(plan);
  for (std::int32_t k = 0; k < count; ++k) {
    const gpu::stream_role role = attn.phase_role(plan, k);
    if (role != ctx.current_role()) {
      if (role == gpu::stream_role::communication) {
        co_await ctx.switch_to_comm();
      } else {
        co_await ctx.switch_to_compute();
      }
    }
    attn.enqueue_phase(plan, io, k, ctx.current_stream());
  }
  if (ctx.current_role() != gpu::stream_role::compute) co_await ctx.switch_to_compute();
}

}  // namespace cobatch::engine
