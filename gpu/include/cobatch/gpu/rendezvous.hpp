// rendezvous: how the processes of one job find each other before a
// communicator exists. Rank 0 serves a small opaque id (an NCCL unique id)
// over TCP; every other rank connects and fetches it. Launchers (torchrun,
// mpirun wrappers, Slurm scripts) describe the job with the environment
// variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
//
// Nothing here needs a GPU; the NCCL communicator builds on it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <system_error>
#include <vector>

namespace cobatch::gpu {

/// Where this process sits in the job.
struct launch_environment {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;         ///< which of this node's GPUs the process drives
  std::string master_addr;    ///< host of rank 0's rendezvous
  std::uint16_t master_port = 0;

  /// Reads RANK, WORLD_SIZE, LOCAL_RANK (default: RANK), MASTER_ADDR and
  /// MASTER_PORT. Throws std::system_error (errc::invalid_argument) naming the
  /// variable when one is missing, not a number, or out of range (rank outside
  /// [0, WORLD_SIZE), port outside [1, 65535]). With WORLD_SIZE=1 the master
  /// variables may be absent.
  static launch_environment from_env();
};

struct rendezvous_options {
  /// How long rank 0 waits for every peer, and a peer for rank 0 (it retries
  /// while rank 0 is not listening yet). Running out is errc::timeout.
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
  /// A peer calls it, on its own thread, with the error of each connection
  /// attempt that failed and will be retried (rank 0 not listening yet, a
  /// reset connection): for logging, and for tests that must know a peer
  /// knocked before rank 0 listens.
  std::function<void(const std::error_code&)> on_retry{};
};

/// Rank 0's side. Binding happens in the constructor, so the port is known
/// (and taken) before any peer is told about it; port 0 picks a free one.
class id_server {
 public:
  id_server(const std::string& address, std::uint16_t port, rendezvous_options options = {});
  id_server(const id_server&) = delete;
  id_server& operator=(const id_server&) = delete;
  ~id_server();

  std::uint16_t port() const noexcept;

  /// Hands `id` to ranks 1 .. world_size - 1, each exactly once; returns when
  /// all have it. A peer that announces another world size, an id size other
  /// than id.size(), a rank out of range or a rank already served is refused
  /// (it gets the reason) and the call throws errc::rank_mismatch. Throws
  /// errc::timeout naming the missing ranks when the timeout runs out. The
  /// listening socket closes when it returns: serve once per id_server.
  void serve(std::span<const std::byte> id, int world_size);
  /// As above, reporting failure through `ec` instead of throwing.
  void serve(std::span<const std::byte> id, int world_size, std::error_code& ec) noexcept;

 private:
  struct state;
  std::unique_ptr<state> state_;
};

/// A peer's side: connects to rank 0 (retrying until it listens), announces
/// itself and returns the id. Throws errc::timeout when rank 0 cannot be
/// reached in time and errc::rank_mismatch when rank 0 refused the peer.
std::vector<std::byte> fetch_id(const std::string& address, std::uint16_t port, int rank, int world_size,
                                std::size_t id_size, rendezvous_options options = {});
/// As above, reporting failure through `ec` (the id is then empty).
std::vector<std::byte> fetch_id(const std::string& address, std::uint16_t port, int rank, int world_size,
                                std::size_t id_size, rendezvous_options options, std::error_code& ec) noexcept;

/// Both sides in one call: rank 0 calls `make_id` (which must return
/// `id_size` bytes), serves the id on env.master_port on every interface and
/// returns it; other ranks fetch it from env.master_addr.
std::vector<std::byte> exchange_id(const launch_environment& env, std::size_t id_size,
                                   const std::function<std::vector<std::byte>()>& make_id,
                                   rendezvous_options options = {});

}  // namespace cobatch::gpu
