// step_model: what the step runner needs from a model, and the buffers
// through which it hands the model each micro-batch's inputs.
//
// The runner owns one set of persistent buffers per micro-batch slot, in the
// memory of the runner's gpu::device (device memory on CUDA, plain host
// memory on the host backend; the addresses never change, so graphs captured
// over them replay with new contents) and copies each step's inputs into them
// on the stream. The model reads them on the device when its work runs, not
// on the host when it is enqueued: sizes that change
// from step to step (real tokens, requests) come from io.counts, so one
// captured graph serves every step padded to the same rung.
//
// A forward pass is a sequence of stages (vLLM's piecewise split): graph
// stages read only persistent buffers and are captured and replayed where the
// dispatch route says so; eager stages depend on the step's host-side plan
// (attention, whose work partition changes every step) and are enqueued every
// time; collectives (decode-context parallelism's exchange of attention
// partials, an all-to-all of experts) run on the communication stream. The
// runner switches micro-batches where a collective begins and ends, so that
// one micro-batch's collective overlaps another's compute.
// The model stays outside the engine library: cobatch is the engine.
#pragma once

#include <cobatch/engine/step/step_plan.hpp>
#include <cobatch/engine/ubatch/ubatch_slicing.hpp>
#include <cobatch/gpu/stream.hpp>

#include <cstdint>
#include <span>

namespace cobatch::engine {

/// One micro-batch slot's persistent buffers: memory of the runner's device
/// (dereference them in the model's device work only; on the host backend
/// that is a host function on the stream). Input rows past counts[0]
/// (padding) hold token 0 at position 0 and belong to no request.
struct ubatch_io {
  std::int32_t slot = 0;
  std::int32_t capacity_tokens = 0;  ///< rows of the per-token buffers
  std::int32_t capacity_reqs = 0;    ///< rows of the per-request buffers
  std::int32_t capacity_pages = 0;   ///< entries of block_indices
  std::int32_t vocab_size = 0;

  const std::int32_t* token_ids = nullptr;        ///< [capacity_tokens] resolved token ids
  const std::int32_t* positions = nullptr;        ///< [capacity_tokens]
  const std::int32_t* query_start_loc = nullptr;  ///< [capacity_reqs + 1] micro-batch-local offsets
  const std::int32_t* seq_lens = nullptr;         ///< [capacity_reqs] context incl. this step's tokens
  const std::int32_t* block_indptr = nullptr;     ///< [capacity_reqs + 1] request i's pages: block_indices[indptr[i], indptr[i+1])
  const std::int32_t* block_indices = nullptr;    ///< [capacity_pages] KV page ids (rank 0's shard size; see step_plan)
  const std::int32_t* req_slots = nullptr;        ///< [capacity_reqs] the request's slot in the step (output index)
  const std::int32_t* sample_rows = nullptr;      ///< [capacity_reqs] local row whose logits are sampled, or -1
  const std::int32_t* sample_index = nullptr;     ///< [capacity_reqs] output index of that token (seeds its draw)
  const float* temperature = nullptr;             ///< [capacity_reqs]
  const float* top_p = nullptr;                   ///< [capacity_reqs]
  const std::uint64_t* seed = nullptr;            ///< [capacity_reqs]
  const std::int32_t* counts = nullptr;           ///< [2]: real tokens, requests
  const std::int32_t* dcp = nullptr;              ///< [2]: this rank, ranks (decode-context parallelism)

  std::int32_t* sampled = nullptr;  ///< step outputs by step slot, shared by the micro-batches
  float* logits = nullptr;          ///< [step slot x vocab] sampled rows' logits, or null when not kept
};

enum class stage_kind : std::uint8_t {
  graph,       ///< compute over persistent buffers only: captured and replayed under a graph route
  eager,       ///< compute that depends on this step's host-side plan: always enqueued
  collective,  ///< communication, on the communication stream
};

struct model_info {
  std::int32_t vocab_size = 0;
  std::int32_t max_context = 0;
  std::int32_t num_layers = 0;
  /// Activation bytes a token needs while its micro-batch runs.
  std::uint64_t activation_bytes_per_token = 0;
};

class step_model {
 public:
  virtual ~step_model() = default;

  virtual model_info info() const = 0;
  /// The stages of one forward pass, in order; at least one. The span stays
  /// valid and unchanged for the model's life.
  virtual std::span<const stage_kind> stages() const = 0;

  /// Called once per slot before its first step: size the slot's workspace
  /// for io.capacity_tokens rows; the pointers in `io` stay valid for good.
  virtual void bind(const ubatch_io& io) = 0;

  /// Host-side planning for one micro-batch of a step (attention plans),
  /// before any of its stages is enqueued; may enqueue copies of what it
  /// plans on `s`, ahead of the stages. Called whether the micro-batch then
  /// replays graphs or runs eagerly. `step` stays unchanged until the step
  /// is collected.
  virtual void plan(const step_plan& step, std::int32_t index, const ubatch& slice, const ubatch_io& io,
                    gpu::stream_ref s) = 0;

  /// Enqueues stage `stage` for `run_tokens` rows (the padded size under a
  /// graph route, the real one eagerly) of slot io.slot on `s` (the compute
  /// stream, or the communication stream for a collective). A graph stage
  /// may be enqueued while `s` is capturing: then it must only enqueue work
  /// that reads the slot's persistent buffers and the model's own.
  virtual void enqueue_stage(std::int32_t stage, const ubatch_io& io, std::int32_t run_tokens, gpu::stream_ref s) = 0;

  /// A step failed: make the next one possible (e.g. abort and renew the
  /// communicators its collectives use). Called after its streams drained.
  virtual void recover() {}
};

}  // namespace cobatch::engine
