// Updating an instantiated CUDA graph in place. Instantiation costs far more
// than a launch (it validates and lays out every node); when a graph is
// recaptured with the same topology and only kernel arguments or buffer
// addresses changed, cudaGraphExecUpdate patches the existing executable.
#pragma once

#include "cobatch/gpu/graph.hpp"

namespace cobatch::gpu::cuda {

enum class graph_update_result {
  updated_in_place,  ///< the topology matched; parameters were patched
  reinstantiated,    ///< it did not; `exec` now holds a fresh instantiation
};

/// Makes `exec` replay `g` from now on, in place where CUDA allows it.
/// Both must come from the CUDA backend (errc::invalid_argument otherwise).
/// Do not call while a launch of `exec` is still being enqueued elsewhere;
/// launches already enqueued run the old parameters.
graph_update_result update(graph_exec& exec, const graph& g);

}  // namespace cobatch::gpu::cuda
