#include "cobatch/engine/ubatch/ubatch_context.hpp"

#include "cobatch/engine/ubatch/timeline.hpp"

#include "message.hpp"

namespace cobatch::engine {

const ubatch& ubatch_context::slice() const {
  if (slice_ == nullptr) {
    throw_engine_error(errc::invalid_argument,
                       detail::cat("ubatch_context::slice: micro-batch ", index_,
                                   " belongs to a step run without a plan, so it has no slice"));
  }
  return *slice_;
}

ubatch_context::switch_awaiter ubatch_context::switch_to_comm() {
  return switch_stream(gpu::stream_role::communication, compute_, compute_done_, switch_kind::to_comm);
}

ubatch_context::switch_awaiter ubatch_context::switch_to_compute() {
  return switch_stream(gpu::stream_role::compute, comm_, comm_done_, switch_kind::to_compute);
}

ubatch_context::switch_awaiter ubatch_context::switch_stream(gpu::stream_role to, gpu::stream_ref from,
                                                             gpu::event_ref done, switch_kind kind) {
  if (role_ == to) {
    const bool comm = to == gpu::stream_role::communication;
    throw_engine_error(errc::invalid_argument,
                       detail::cat(comm ? "ubatch_context::switch_to_comm: micro-batch "
                                        : "ubatch_context::switch_to_compute: micro-batch ",
                                   index_, comm ? " is already on the comm stream" : " is already on the compute stream"));
  }
  if (trace_ != nullptr) close_span();
  from.record(done);  // the other stream waits on it after the hand-over (join_after_switch)
  role_ = to;
  return {this, kind};
}

void ubatch_context::label(std::string_view name) {
  if (trace_ != nullptr) label_.assign(name);
}

void ubatch_context::open_span() {
  if (trace_ == nullptr || open_span_) return;
  const bool on_compute = role_ == gpu::stream_role::compute;
  open_span_ = trace_->begin_device_span(current_stream(), on_compute ? compute_lane_ : comm_lane_, index_,
                                         on_compute ? "compute" : "comm");
}

void ubatch_context::close_span() {
  if (trace_ == nullptr || !open_span_) return;
  trace_->end_device_span(current_stream(), *open_span_, label_);
  open_span_.reset();
  label_.clear();
}

}  // namespace cobatch::engine
