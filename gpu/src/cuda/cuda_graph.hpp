// Graphs of the CUDA backend: captured graphs and their executables, and
// the notes a capture leaves for each launch of its graph. Internal to the
// CUDA backend.
#pragma once

#include "cobatch/gpu/graph.hpp"

#include <cuda_runtime.h>

#include <memory>
#include <system_error>
#include <vector>

namespace cobatch::gpu::cuda::detail {

class cuda_stream;

/// Something to do each time a graph is launched, noted while it was
/// captured: a collective captured into a graph is watched (completion
/// event, guard) per replay, as an eager one is per call.
class launch_note {
 public:
  virtual ~launch_note() = default;
  /// Asked before each launch: a failure stops the launch (the graph's
  /// stream fails with it instead). A collective of an aborted communicator
  /// must not run: its kernels would use what the abort freed.
  virtual std::error_code before_launch() const noexcept = 0;
  virtual void on_launch(cuda_stream& s) const = 0;
};

/// Notes of the captures in progress, by capture id (cudaStreamGetCaptureInfo):
/// a capture may span streams, and the notes of all of them go to the graph
/// that ends it.
void add_capture_note(unsigned long long capture_id, std::shared_ptr<const launch_note> note);
std::vector<std::shared_ptr<const launch_note>> take_capture_notes(unsigned long long capture_id);

/// The graph a capture ended with, owning `g`, carrying the capture's notes.
graph make_graph(cudaGraph_t g, std::vector<std::shared_ptr<const launch_note>> notes);

}  // namespace cobatch::gpu::cuda::detail
