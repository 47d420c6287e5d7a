// capture_session: the bookkeeping of one stream capture in progress.
//
// As in CUDA, capture follows events across streams: a stream that is not
// capturing and waits on an event recorded inside a capture joins it as a new
// lane; a record inside the capture followed by a wait inside the capture is an
// internal dependency. The origin stream ends the capture; every other lane
// must have been joined back (the origin waited on its last record).
#pragma once

#include "host_graph.hpp"

#include <cstddef>
#include <map>
#include <optional>
#include <vector>

namespace cobatch::gpu::host {

class host_stream;

class capture_session {
 public:
  explicit capture_session(host_stream* origin) { lanes_.push_back({origin, {}}); }

  std::size_t join(host_stream* s) {
    lanes_.push_back({s, {}});
    return lanes_.size() - 1;
  }
  lane& nodes(std::size_t lane_index) { return lanes_[lane_index].nodes; }
  std::size_t new_marker() { return markers_++; }
  std::size_t markers() const noexcept { return markers_; }

  /// Which session and marker an event was last recorded at inside a capture.
  void note_record(const event_slot* e, std::size_t marker) { recorded_[e] = marker; }
  std::optional<std::size_t> marker_of(const event_slot* e) const {
    auto it = recorded_.find(e);
    if (it == recorded_.end()) return std::nullopt;
    return it->second;
  }

  std::size_t lane_count() const noexcept { return lanes_.size(); }
  host_stream* stream_of(std::size_t lane_index) const noexcept { return lanes_[lane_index].stream; }

  /// Checks that every side lane ends with a record the origin lane waits on.
  void check_joined() const;

  graph_body take();

 private:
  struct lane_entry {
    host_stream* stream;
    lane nodes;
  };
  std::vector<lane_entry> lanes_;
  std::size_t markers_ = 0;
  std::map<const event_slot*, std::size_t> recorded_;  // slots kept alive by the nodes
};

}  // namespace cobatch::gpu::host
