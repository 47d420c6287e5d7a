// TCP rendezvous for the job's bootstrap id, written with standalone Asio.
//
// Wire format (all integers little-endian u32):
//   peer -> rank 0: magic "CBRV", rank, world_size, id_size
//   rank 0 -> peer: status (0 accepted, else why refused), then id_size bytes
//                   of id when accepted
// Everything runs on one io_context bounded by a deadline, so no step can
// block past the timeout.
#include "cobatch/gpu/rendezvous.hpp"

#include "cobatch/gpu/error.hpp"

#include <asio/connect.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/read.hpp>
#include <asio/steady_timer.hpp>
#include <asio/write.hpp>

#include <array>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <new>
#include <optional>
#include <set>
#include <string>
#include <system_error>

namespace cobatch::gpu {
namespace {

constexpr std::array<std::byte, 4> magic{std::byte{'C'}, std::byte{'B'}, std::byte{'R'}, std::byte{'V'}};

enum refusal : std::uint32_t {
  accepted = 0,
  bad_magic = 1,
  wrong_world_size = 2,
  wrong_id_size = 3,
  rank_out_of_range = 4,
  rank_taken = 5,
};

const char* describe(std::uint32_t r) {
  switch (r) {
    case bad_magic: return "it did not speak the cobatch rendezvous protocol";
    case wrong_world_size: return "it announced a different world size than rank 0's";
    case wrong_id_size: return "it expects an id of another size than rank 0 serves";
    case rank_out_of_range: return "its rank is outside [1, world size)";
    case rank_taken: return "another process already took its rank";
    default: return "unknown reason";
  }
}

[[noreturn]] void fail(errc code, const std::string& what) {
  throw std::system_error(make_error_code(code), "cobatch: rendezvous: " + what);
}

void put_u32(std::byte* out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<std::byte>((v >> (8 * i)) & 0xffu);
}
std::uint32_t get_u32(const std::byte* in) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(in[i]) << (8 * i);
  return v;
}

std::optional<long> parse_long(const char* text) {
  if (text == nullptr || *text == '\0') return std::nullopt;
  long v = 0;
  const char* end = text + std::strlen(text);
  auto [ptr, ec] = std::from_chars(text, end, v);
  if (ec != std::errc{} || ptr != end) return std::nullopt;
  return v;
}

long env_number(const char* name, long lo, long hi, std::optional<long> fallback = std::nullopt) {
  const char* text = std::getenv(name);
  if (text == nullptr) {
    if (fallback) return *fallback;
    fail(errc::invalid_argument, std::string(name) + " is not set");
  }
  auto v = parse_long(text);
  if (!v) fail(errc::invalid_argument, std::string(name) + "=\"" + text + "\" is not an integer");
  if (*v < lo || *v > hi) {
    fail(errc::invalid_argument, std::string(name) + "=" + text + " is outside [" + std::to_string(lo) + ", " +
                                     std::to_string(hi) + "]");
  }
  return *v;
}

using tcp = asio::ip::tcp;

}  // namespace

launch_environment launch_environment::from_env() {
  launch_environment env;
  env.world_size = static_cast<int>(env_number("WORLD_SIZE", 1, 1 << 20));
  env.rank = static_cast<int>(env_number("RANK", 0, env.world_size - 1));
  env.local_rank = static_cast<int>(env_number("LOCAL_RANK", 0, 1 << 16, env.rank));
  if (env.world_size > 1 || std::getenv("MASTER_ADDR") != nullptr || std::getenv("MASTER_PORT") != nullptr) {
    const char* addr = std::getenv("MASTER_ADDR");
    if (addr == nullptr || *addr == '\0') fail(errc::invalid_argument, "MASTER_ADDR is not set");
    env.master_addr = addr;
    env.master_port = static_cast<std::uint16_t>(env_number("MASTER_PORT", 1, 65535));
  }
  return env;
}

struct id_server::state {
  rendezvous_options options;
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::string address;
};

id_server::id_server(const std::string& address, std::uint16_t port, rendezvous_options options)
    : state_(std::make_unique<state>()) {
  state_->options = options;
  state_->address = address + ":" + std::to_string(port);
  std::error_code ec;
  auto ip = asio::ip::make_address(address.empty() ? "0.0.0.0" : address, ec);
  if (ec) fail(errc::invalid_argument, "\"" + address + "\" is not an IP address to listen on");
  tcp::endpoint endpoint(ip, port);
  state_->acceptor.open(endpoint.protocol(), ec);
  if (!ec) state_->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) state_->acceptor.bind(endpoint, ec);
  if (!ec) state_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    throw std::system_error(ec, "cobatch: rendezvous: rank 0 cannot listen on " + state_->address);
  }
}

id_server::~id_server() = default;

std::uint16_t id_server::port() const noexcept {
  std::error_code ec;
  auto ep = state_->acceptor.local_endpoint(ec);
  return ec ? 0 : ep.port();
}

void id_server::serve(std::span<const std::byte> id, int world_size) {
  if (world_size < 1) fail(errc::invalid_argument, "world size must be at least 1");
  if (world_size == 1) return;
  auto& io = state_->io;
  io.restart();

  struct peer {
    tcp::socket socket;
    std::array<std::byte, 16> hello{};
    std::vector<std::byte> reply;
  };
  std::vector<std::shared_ptr<peer>> peers;  // to close them all on the way out
  std::set<int> served;
  std::string refused;
  std::size_t in_flight = 0;
  const auto expected = static_cast<std::size_t>(world_size - 1);

  // Each accepted peer is read, judged and answered; the accept loop goes on
  // until every rank has its id.
  std::function<void()> accept_next = [&] {
    auto p = std::make_shared<peer>(peer{tcp::socket(io), {}, {}});
    peers.push_back(p);
    state_->acceptor.async_accept(p->socket, [&, p](std::error_code ec) {
      if (ec) return;  // the acceptor was closed: done or timed out
      ++in_flight;
      asio::async_read(p->socket, asio::buffer(p->hello), [&, p](std::error_code rec, std::size_t) {
        if (rec) {
          --in_flight;
          return;  // a peer that hung up before saying hello is not a rank
        }
        std::uint32_t verdict = accepted;
        const auto rank = static_cast<int>(get_u32(p->hello.data() + 4));
        if (std::memcmp(p->hello.data(), magic.data(), magic.size()) != 0) {
          verdict = bad_magic;
        } else if (get_u32(p->hello.data() + 8) != static_cast<std::uint32_t>(world_size)) {
          verdict = wrong_world_size;
        } else if (get_u32(p->hello.data() + 12) != id.size()) {
          verdict = wrong_id_size;
        } else if (rank < 1 || rank >= world_size) {
          verdict = rank_out_of_range;
        } else if (served.count(rank) != 0) {
          verdict = rank_taken;
        }
        p->reply.resize(4);
        put_u32(p->reply.data(), verdict);
        if (verdict == accepted) {
          served.insert(rank);
          p->reply.insert(p->reply.end(), id.begin(), id.end());
        } else if (refused.empty()) {
          refused = "refused a peer announcing rank " + std::to_string(rank) + ": " + describe(verdict);
        }
        asio::async_write(p->socket, asio::buffer(p->reply), [&, p](std::error_code, std::size_t) {
          --in_flight;
          if (served.size() == expected || !refused.empty()) state_->acceptor.close();
        });
      });
      accept_next();
    });
  };
  accept_next();

  asio::steady_timer deadline(io, state_->options.timeout);
  bool timed_out = false;
  deadline.async_wait([&](std::error_code ec) {
    if (ec) return;
    timed_out = true;
    std::error_code ignored;
    state_->acceptor.close(ignored);
  });
  // Runs until every rank has its id (and every reply is written), a peer
  // was refused, or the deadline passed.
  while (!io.stopped()) {
    io.run_one();
    if (timed_out || ((served.size() == expected || !refused.empty()) && in_flight == 0)) break;
  }
  // Whatever is still in flight (a peer that connected and went silent) is
  // cancelled, and its handlers run now, while what they refer to is alive.
  std::error_code ignored;
  state_->acceptor.close(ignored);
  for (auto& p : peers) p->socket.close(ignored);
  deadline.cancel();
  io.restart();
  io.poll();
  accept_next = nullptr;

  if (!refused.empty()) fail(errc::rank_mismatch, "rank 0 on " + state_->address + " " + refused);
  if (served.size() != expected) {
    std::string missing;
    for (int r = 1; r < world_size; ++r) {
      if (served.count(r) == 0) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    }
    fail(errc::timeout, "rank 0 on " + state_->address + " heard from " + std::to_string(served.size()) + " of " +
                            std::to_string(expected) + " peers within " +
                            std::to_string(state_->options.timeout.count()) + " ms; missing ranks: " + missing);
  }
}

std::vector<std::byte> fetch_id(const std::string& address, std::uint16_t port, int rank, int world_size,
                                std::size_t id_size, rendezvous_options options) {
  if (world_size < 2 || rank < 1 || rank >= world_size) {
    fail(errc::invalid_argument, "fetch_id is for ranks 1 .. world_size - 1; got rank " + std::to_string(rank) +
                                     " of " + std::to_string(world_size));
  }
  const std::string where = address + ":" + std::to_string(port);
  asio::io_context io;
  tcp::resolver resolver(io);
  std::error_code ec;
  auto endpoints = resolver.resolve(address, std::to_string(port), ec);
  if (ec) throw std::system_error(ec, "cobatch: rendezvous: cannot resolve MASTER_ADDR " + address);

  tcp::socket socket(io);
  asio::steady_timer retry(io);
  std::array<std::byte, 16> hello{};
  std::memcpy(hello.data(), magic.data(), magic.size());
  put_u32(hello.data() + 4, static_cast<std::uint32_t>(rank));
  put_u32(hello.data() + 8, static_cast<std::uint32_t>(world_size));
  put_u32(hello.data() + 12, static_cast<std::uint32_t>(id_size));
  std::array<std::byte, 4> status{};
  std::vector<std::byte> id(id_size);
  std::error_code last_error;
  bool done = false;
  std::optional<std::uint32_t> verdict;

  // Rank 0 may start later than this rank: a refused or reset connection is
  // retried every 50 ms until the deadline.
  std::function<void()> attempt = [&] {
    std::error_code ignored;
    socket.close(ignored);
    asio::async_connect(socket, endpoints, [&](std::error_code cec, const tcp::endpoint&) {
      if (cec) {
        last_error = cec;
        if (options.on_retry) options.on_retry(cec);
        retry.expires_after(std::chrono::milliseconds(50));
        retry.async_wait([&](std::error_code tec) {
          if (!tec) attempt();
        });
        return;
      }
      asio::async_write(socket, asio::buffer(hello), [&](std::error_code wec, std::size_t) {
        if (wec) {
          last_error = wec;
          if (options.on_retry) options.on_retry(wec);
          return attempt();
        }
        asio::async_read(socket, asio::buffer(status), [&](std::error_code sec, std::size_t) {
          if (sec) {
            last_error = sec;
            if (options.on_retry) options.on_retry(sec);
            return attempt();
          }
          verdict = get_u32(status.data());
          if (*verdict != accepted) {
            done = true;
            return;
          }
          asio::async_read(socket, asio::buffer(id), [&](std::error_code iec, std::size_t) {
            done = !iec;
            if (iec) {
              last_error = iec;
              if (options.on_retry) options.on_retry(iec);
              verdict.reset();
              attempt();
            }
          });
        });
      });
    });
  };
  attempt();
  io.run_for(options.timeout);
  attempt = nullptr;

  if (verdict && *verdict != accepted) {
    fail(errc::rank_mismatch, "rank 0 on " + where + " refused rank " + std::to_string(rank) + ": " + describe(*verdict));
  }
  if (!done) {
    fail(errc::timeout, "rank " + std::to_string(rank) + " could not get the id from rank 0 on " + where + " within " +
                            std::to_string(options.timeout.count()) + " ms" +
                            (last_error ? " (last error: " + last_error.message() + ")" : ""));
  }
  return id;
}

namespace {
// The error_code forms: the same work, with the failure caught at the edge.
template <typename F>
auto catching(std::error_code& ec, F&& f) noexcept -> decltype(f()) {
  ec.clear();
  try {
    return f();
  } catch (const std::system_error& e) {
    ec = e.code();
  } catch (const std::bad_alloc&) {
    ec = std::make_error_code(std::errc::not_enough_memory);
  } catch (...) {
    ec = make_error_code(errc::operation_failed);
  }
  return decltype(f())();
}
}  // namespace

void id_server::serve(std::span<const std::byte> id, int world_size, std::error_code& ec) noexcept {
  catching(ec, [&] { serve(id, world_size); });
}

std::vector<std::byte> fetch_id(const std::string& address, std::uint16_t port, int rank, int world_size,
                                std::size_t id_size, rendezvous_options options, std::error_code& ec) noexcept {
  return catching(ec, [&] { return fetch_id(address, port, rank, world_size, id_size, options); });
}

std::vector<std::byte> exchange_id(const launch_environment& env, std::size_t id_size,
                                   const std::function<std::vector<std::byte>()>& make_id,
                                   rendezvous_options options) {
  if (env.rank == 0) {
    auto id = make_id();
    if (id.size() != id_size) {
      fail(errc::invalid_argument, "the id is " + std::to_string(id.size()) + " bytes, expected " +
                                       std::to_string(id_size));
    }
    if (env.world_size > 1) {
      id_server server("0.0.0.0", env.master_port, options);
      server.serve(id, env.world_size);
    }
    return id;
  }
  return fetch_id(env.master_addr, env.master_port, env.rank, env.world_size, id_size, options);
}

}  // namespace cobatch::gpu
