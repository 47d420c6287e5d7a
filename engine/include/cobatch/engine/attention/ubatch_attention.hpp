// ubatch_attention: one layer's batch attention inside a micro-batch
// coroutine, with the DCP exchange at switch points: attention on the compute
// stream, switch_to_comm, the gather, switch_to_compute, the merge. While this
// micro-batch's gather runs on the comm stream, the next micro-batch's
// attention runs on compute.
#pragma once

#include <cobatch/coro/task.hpp>
#include <cobatch/engine/attention/batch_attention.hpp>
#include <cobatch/engine/ubatch/ubatch_context.hpp>

namespace cobatch::engine {

/// Enqueues every phase of `attn`'s run of `plan` on `ctx`'s current stream,
/// switching to the comm stream before each communication phase and back to
/// compute before each compute phase (switch points hand the thread to the
/// other micro-batches). Starts on whichever stream is current and ends on
/// compute; returns once everything is enqueued (await the stream, or let the
/// step's join do it, for the result). Throws engine_error for bad input
/// (before anything is enqueued, see batch_attention::check) and the switch
/// points' operation_aborted when the step is cancelled.
coro::task<void> run_attention(ubatch_context& ctx, batch_attention& attn, const attention_plan& plan,
                               attention_io io);

}  // namespace cobatch::engine
