// Host graphs: what a capture records (lanes of work, record and wait nodes),
// the graph template, and its instantiated, replayable form.
#pragma once

#include "host_event.hpp"
#include "host_fence.hpp"

#include "cobatch/gpu/detail/unique_function.hpp"
#include "cobatch/gpu/graph.hpp"

#include <cstddef>
#include <memory>
#include <variant>
#include <vector>

namespace cobatch::gpu::host {

class host_stream;

struct work_node {
  std::shared_ptr<detail::unique_function> fn;
};
// Nodes own the slots of the events they name, as a CUDA graph's event nodes
// do not need the event object: the graph may be launched after the events
// are gone.
struct record_node {
  std::shared_ptr<event_slot> event;  // may be waited on from outside after a replay
  std::size_t marker;
};
struct wait_node {
  std::shared_ptr<event_slot> event;  // external: the event's record at launch time
  std::size_t marker;                 // internal: the record inside the graph it joins
  bool internal;
};
using graph_node = std::variant<work_node, record_node, wait_node>;
using lane = std::vector<graph_node>;

struct graph_body {
  std::vector<lane> lanes;  // lane 0 runs on the launch stream
  std::size_t markers = 0;
  std::size_t nodes = 0;
};

/// The fences of one replay.
struct launch_fences {
  std::vector<std::shared_ptr<host_fence>> markers;   // one per record, fresh per launch
  std::vector<std::shared_ptr<host_fence>> external;  // one per external wait, in lane order
};

class host_graph_exec final : public detail::graph_exec_impl {
 public:
  host_graph_exec(std::shared_ptr<const graph_body> body, coro::completion_reactor& reactor);
  ~host_graph_exec() override;
  void launch(detail::stream_impl& s) override;
  std::size_t node_count() const noexcept override { return body_->nodes; }

 private:
  std::shared_ptr<const graph_body> body_;
  std::vector<std::unique_ptr<host_stream>> side_lanes_;  // run lanes 1..n of each replay
};

class host_graph final : public detail::graph_impl {
 public:
  host_graph(graph_body body, coro::completion_reactor& reactor)
      : body_(std::make_shared<const graph_body>(std::move(body))), reactor_(&reactor) {}
  std::unique_ptr<detail::graph_exec_impl> instantiate() const override {
    return std::make_unique<host_graph_exec>(body_, *reactor_);
  }
  std::size_t node_count() const noexcept override { return body_->nodes; }

 private:
  std::shared_ptr<const graph_body> body_;
  coro::completion_reactor* reactor_;
};

}  // namespace cobatch::gpu::host
