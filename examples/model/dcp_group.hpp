// dcp_group: the decode-context-parallel ranks of one process (the host
// backend's in-process communicators), renewable after a failure: an aborted
// communicator stays aborted, so a failed step is followed by a fresh set.
#pragma once

#include <cobatch/gpu/communicator.hpp>
#include <cobatch/gpu/host/host_device.hpp>

#include <cstddef>
#include <vector>

namespace cobatch::model {

class dcp_group {
 public:
  explicit dcp_group(int world, gpu::communicator_options options = {})
      : options_(options), comms_(gpu::host::make_communicators(world, options)) {}

  int world() const noexcept { return static_cast<int>(comms_.size()); }
  /// Rank r's communicator; the object (and so the pointer) stays the same
  /// across renewals.
  const gpu::communicator& comm(int rank) const { return comms_.at(static_cast<std::size_t>(rank)); }

  /// Fails every pending and later collective of every rank.
  void abort() noexcept {
    for (auto& c : comms_) c.abort();
    aborted_ = true;
  }
  /// After abort(), once no stream runs a collective any more: a fresh set.
  void renew_if_aborted() {
    if (!aborted_) return;
    auto fresh = gpu::host::make_communicators(world(), options_);
    for (std::size_t r = 0; r < comms_.size(); ++r) comms_[r] = std::move(fresh[r]);
    aborted_ = false;
  }

 private:
  gpu::communicator_options options_;
  std::vector<gpu::communicator> comms_;
  bool aborted_ = false;
};

}  // namespace cobatch::model
