// NCCL communicators behind gpu::communicator, created non-blocking.
//
// Why non-blocking (ncclConfig_t::blocking = 0): a blocking communicator can
// hang the calling thread inside NCCL (in init, or in a collective whose peer
// died), and then nothing can abort it. Non-blocking calls return at once
// (ncclInProgress); cobatch waits until the call has been enqueued
// (ncclCommGetAsyncError leaves ncclInProgress), records a completion event,
// and every fence of the stream from then on polls the event and the
// communicator's asynchronous error together, with a deadline. A timeout or
// an asynchronous error aborts the communicator (ncclCommAbort), which makes
// its kernels return, and fails every pending waiter with the error: nothing
// hangs. One thread issues calls on a communicator at a time.
#pragma once

#include "cobatch/gpu/communicator.hpp"
#include "cobatch/gpu/cuda/cuda_device.hpp"
#include "cobatch/gpu/rendezvous.hpp"

#include <array>
#include <chrono>
#include <cstddef>
#include <vector>

namespace cobatch::gpu::cuda::nccl {

/// ncclUniqueId's bytes (NCCL_UNIQUE_ID_BYTES).
inline constexpr std::size_t unique_id_size = 128;
using unique_id = std::array<std::byte, unique_id_size>;

/// A fresh id (ncclGetUniqueId), made by rank 0 and shared with every rank.
unique_id make_unique_id();

/// Rank `rank` of `world_size`, on `dev`. Every rank calls this with the
/// same id. Throws cuda_error (nccl category) or std::system_error
/// (errc::timeout, errc::invalid_argument).
communicator make_communicator(cuda_device& dev, int rank, int world_size, const unique_id& id,
                               communicator_options options = {});

/// One process per GPU, as launchers start jobs: rank 0 makes the id and
/// serves it over TCP (MASTER_ADDR:MASTER_PORT), the others fetch it, then
/// every rank creates its communicator. `dev` should be device LOCAL_RANK.
communicator bootstrap(cuda_device& dev, const launch_environment& env, communicator_options options = {},
                       rendezvous_options rendezvous = {});

/// One process, every GPU in `devices`: element r is rank r on devices[r]
/// (what ncclCommInitAll does, with non-blocking communicators).
std::vector<communicator> make_local_communicators(const std::vector<cuda_device*>& devices,
                                                   communicator_options options = {});

/// Communicators whose last handle is gone are finalized and destroyed on a
/// background thread, bounded by their timeout: finalizing waits for peers
/// (and freeing device memory synchronizes the device), which must never
/// block a loop thread. This blocks until every communicator destroyed so
/// far is released; call it before cudaDeviceReset, or before the process
/// tears CUDA down, so that neither races NCCL.
void wait_for_retired_communicators();

/// A thread-wide NCCL group (ncclGroupStart / ncclGroupEnd). Needed when one
/// thread drives several ranks (make_local_communicators): each rank's
/// collective waits for the others, so all must be issued before any is
/// waited for. gpu::group_guard opens the same kind of group, limited to one
/// communicator; both nest.
class thread_group_guard {
 public:
  thread_group_guard();
  thread_group_guard(const thread_group_guard&) = delete;
  thread_group_guard& operator=(const thread_group_guard&) = delete;
  /// Ends the group if end() was not called; never throws (the streams of
  /// the grouped calls report a failure).
  ~thread_group_guard();
  /// Issues the grouped calls; throws if that fails.
  void end();

 private:
  bool open_ = true;
};

}  // namespace cobatch::gpu::cuda::nccl
