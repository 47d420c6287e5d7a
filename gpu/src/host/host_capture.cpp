// Host backend: stream capture bookkeeping.
#include "host_capture.hpp"

#include "cobatch/gpu/error.hpp"

#include <string>
#include <system_error>

namespace cobatch::gpu::host {

void capture_session::check_joined() const {
  for (std::size_t l = 1; l < lanes_.size(); ++l) {
    const auto& nodes = lanes_[l].nodes;
    const auto* last = nodes.empty() ? nullptr : std::get_if<record_node>(&nodes.back());
    bool joined = false;
    if (last != nullptr) {
      for (const auto& n : lanes_[0].nodes) {
        if (const auto* w = std::get_if<wait_node>(&n); w && w->internal && w->marker == last->marker) joined = true;
      }
    }
    if (!joined) {
      throw std::system_error(make_error_code(errc::capture_invalid),
                              "cobatch: capture ended with work on a joined stream (lane " + std::to_string(l) +
                                  ") that the origin stream never waited for");
    }
  }
}

graph_body capture_session::take() {
  graph_body body;
  body.markers = markers_;
  for (auto& l : lanes_) {
    body.nodes += l.nodes.size();
    body.lanes.push_back(std::move(l.nodes));
  }
  return body;
}

}  // namespace cobatch::gpu::host
