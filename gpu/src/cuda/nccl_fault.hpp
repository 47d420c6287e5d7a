// Fault injection for the NCCL communicator's failure paths. A single GPU
// cannot make NCCL fail on demand once a call is accepted (a peer that dies,
// a network that breaks, an enqueue that never finishes); these hooks make
// the next such wait on the calling thread fail as if NCCL had reported it,
// after the calls were really enqueued, so that tests see what the rest of
// the backend does with the failure. Not installed; for tests only.
#pragma once

#include <system_error>

namespace cobatch::gpu::cuda::nccl::fault {

/// The next wait for calls to be enqueued (after a collective outside a
/// group, or at the end of the outermost group) on this thread reports `ec`
/// as the communicator's asynchronous error: the communicator is aborted
/// and the wait throws.
void fail_next_enqueue_wait(std::error_code ec) noexcept;

}  // namespace cobatch::gpu::cuda::nccl::fault
