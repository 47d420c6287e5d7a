// Host backend: graph instantiation and replay.
#include "host_graph.hpp"

#include "host_stream.hpp"

#include "cobatch/gpu/error.hpp"

#include <system_error>

namespace cobatch::gpu::host {

host_graph_exec::host_graph_exec(std::shared_ptr<const graph_body> body, coro::completion_reactor& reactor)
    : body_(std::move(body)) {
  for (std::size_t l = 1; l < body_->lanes.size(); ++l) {
    side_lanes_.push_back(std::make_unique<host_stream>(reactor, stream_priority::normal));
  }
}

host_graph_exec::~host_graph_exec() = default;

void host_graph_exec::launch(detail::stream_impl& s) {
  auto* hs = dynamic_cast<host_stream*>(&s);
  if (hs == nullptr) {
    throw std::system_error(make_error_code(errc::invalid_argument),
                            "cobatch: a host graph can only be launched on a host stream");
  }
  if (hs->capturing()) {
    throw std::system_error(make_error_code(errc::capture_invalid),
                            "cobatch: launching a graph into a capture is not supported by the host backend");
  }
  auto fences = std::make_shared<launch_fences>();
  fences->markers.reserve(body_->markers);
  for (std::size_t m = 0; m < body_->markers; ++m) fences->markers.push_back(std::make_shared<host_fence>());
  // External waits first, records second: a wait outside the graph means the
  // event's record as it stands at launch (what the eager wait saw during the
  // capture), never a record this replay makes later, even of the same event.
  std::vector<std::size_t> first_external(body_->lanes.size(), 0);
  for (std::size_t l = 0; l < body_->lanes.size(); ++l) {
    first_external[l] = fences->external.size();
    for (const auto& node : body_->lanes[l]) {
      if (const auto* w = std::get_if<wait_node>(&node); w && !w->internal) {
        fences->external.push_back(w->event->current());
      }
    }
  }
  for (const auto& lane_nodes : body_->lanes) {
    for (const auto& node : lane_nodes) {
      if (const auto* r = std::get_if<record_node>(&node)) {
        r->event->set(fences->markers[r->marker]);  // the host can await the event at once
      }
    }
  }
  std::shared_ptr<const launch_fences> shared = std::move(fences);
  // Each lane of the replay is one queue entry: that is where a graph saves
  // host time. Side lanes start only through their internal waits on lane 0.
  for (std::size_t l = 1; l < body_->lanes.size(); ++l) {
    side_lanes_[l - 1]->push(run_graph{body_, l, shared, first_external[l]});
  }
  hs->push(run_graph{body_, 0, shared, first_external[0]});
}

}  // namespace cobatch::gpu::host
