#include "cobatch/gpu/rendezvous.hpp"

#include "cobatch/gpu/error.hpp"
#include "host_gate.hpp"

#include <catch2/catch.hpp>

#include <cstdlib>
#include <functional>
#include <future>
#include <optional>
#include <string>
#include <random>
#include <thread>
#include <vector>

using namespace cobatch;
using namespace std::chrono_literals;

namespace {
std::vector<std::byte> random_id(std::size_t n) {
  std::mt19937 rng(std::random_device{}());
  std::vector<std::byte> id(n);
  for (auto& b : id) b = static_cast<std::byte>(rng() & 0xff);
  return id;
}

std::error_code code_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::system_error& e) {
    return e.code();
  }
  return {};
}

// Sets environment variables for one test and restores them afterwards.
class scoped_env {
 public:
  scoped_env(std::initializer_list<std::pair<const char*, const char*>> vars) {
    for (const char* name : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}) {
      const char* old = std::getenv(name);
      saved_.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
      ::unsetenv(name);
    }
    for (auto [name, value] : vars) ::setenv(name, value, 1);
  }
  ~scoped_env() {
    for (auto& [name, value] : saved_) {
      if (value) ::setenv(name.c_str(), value->c_str(), 1);
      else ::unsetenv(name.c_str());
    }
  }

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};
}  // namespace

TEST_CASE("two ranks exchange a 128-byte id over loopback", "[gpu][rendezvous]") {
  const auto id = random_id(128);
  gpu::id_server server("127.0.0.1", 0, {5000ms});
  const auto port = server.port();
  REQUIRE(port != 0);
  auto peer = std::async(std::launch::async, [port] { return gpu::fetch_id("127.0.0.1", port, 1, 2, 128, {5000ms}); });
  server.serve(id, 2);
  CHECK(peer.get() == id);
}

TEST_CASE("rank 0 serves every peer of a larger world, whatever the order", "[gpu][rendezvous]") {
  const auto id = random_id(128);
  gpu::id_server server("127.0.0.1", 0, {5000ms});
  const auto port = server.port();
  std::vector<std::future<std::vector<std::byte>>> peers;
  for (int r = 4; r >= 1; --r) {
    peers.push_back(std::async(std::launch::async, [port, r] { return gpu::fetch_id("127.0.0.1", port, r, 5, 128, {5000ms}); }));
  }
  server.serve(id, 5);
  for (auto& p : peers) CHECK(p.get() == id);
}

TEST_CASE("a peer that starts before rank 0 listens retries until it does", "[gpu][rendezvous]") {
  const auto id = random_id(128);
  // Find a free port, release it, and let the peer knock before rank 0 binds.
  std::uint16_t port = 0;
  {
    gpu::id_server probe("127.0.0.1", 0);
    port = probe.port();
  }
  // Rank 0 binds only once the peer has knocked and been turned away.
  test::host_gate knocked;
  const gpu::rendezvous_options peer_options{.timeout = 5000ms,
                                             .on_retry = [knocked](const std::error_code&) { knocked.open(); }};
  auto peer = std::async(std::launch::async,
                         [port, peer_options] { return gpu::fetch_id("127.0.0.1", port, 1, 2, 128, peer_options); });
  knocked.wait();
  gpu::id_server server("127.0.0.1", port, {5000ms});
  server.serve(id, 2);
  CHECK(peer.get() == id);
}

TEST_CASE("rendezvous failures are typed errors with the reason, never hangs", "[gpu][rendezvous]") {
  SECTION("no rank 0: the peer times out") {
    std::uint16_t port = 0;
    {
      gpu::id_server probe("127.0.0.1", 0);
      port = probe.port();
    }
    CHECK(code_of([&] { gpu::fetch_id("127.0.0.1", port, 1, 2, 128, {300ms}); }) == gpu::errc::timeout);
  }
  SECTION("a missing peer: rank 0 times out naming it") {
    gpu::id_server server("127.0.0.1", 0, {300ms});
    const auto port = server.port();
    auto peer = std::async(std::launch::async, [port] { return gpu::fetch_id("127.0.0.1", port, 2, 3, 128, {3000ms}); });
    try {
      server.serve(random_id(128), 3);
      FAIL("serve returned without rank 1");
    } catch (const std::system_error& e) {
      CHECK(e.code() == gpu::errc::timeout);
      CHECK_THAT(e.what(), Catch::Contains("missing ranks: 1"));
    }
    CHECK(peer.get().size() == 128);  // rank 2 was served before the deadline
  }
  SECTION("a peer with another world size is refused on both sides") {
    gpu::id_server server("127.0.0.1", 0, {3000ms});
    const auto port = server.port();
    auto peer = std::async(std::launch::async, [port] {
      return code_of([port] { gpu::fetch_id("127.0.0.1", port, 1, 3, 128, {3000ms}); });
    });
    CHECK(code_of([&] { server.serve(random_id(128), 2); }) == gpu::errc::rank_mismatch);
    CHECK(peer.get() == gpu::errc::rank_mismatch);
  }
  SECTION("the error_code forms report instead of throwing") {
    std::uint16_t port = 0;
    {
      gpu::id_server probe("127.0.0.1", 0);
      port = probe.port();
    }
    std::error_code ec;
    auto id = gpu::fetch_id("127.0.0.1", port, 1, 2, 128, {200ms}, ec);
    CHECK(ec == gpu::errc::timeout);
    CHECK(id.empty());
    gpu::id_server server("127.0.0.1", 0, {200ms});
    server.serve(random_id(128), 2, ec);
    CHECK(ec == gpu::errc::timeout);
    server.serve(random_id(128), 1, ec);  // nobody to wait for
    CHECK_FALSE(ec);
  }
  SECTION("bad arguments") {
    CHECK(code_of([] { gpu::fetch_id("127.0.0.1", 1234, 0, 2, 128); }) == gpu::errc::invalid_argument);
    CHECK(code_of([] { gpu::id_server("not an address", 0); }) == gpu::errc::invalid_argument);
  }
}

TEST_CASE("launch_environment reads the launcher's variables and names the bad one", "[gpu][rendezvous]") {
  SECTION("complete") {
    scoped_env env{{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "10.0.0.1"}, {"MASTER_PORT", "29500"}};
    auto e = gpu::launch_environment::from_env();
    CHECK(e.rank == 3);
    CHECK(e.world_size == 8);
    CHECK(e.local_rank == 1);
    CHECK(e.master_addr == "10.0.0.1");
    CHECK(e.master_port == 29500);
  }
  SECTION("single process needs no master") {
    scoped_env env{{"RANK", "0"}, {"WORLD_SIZE", "1"}};
    auto e = gpu::launch_environment::from_env();
    CHECK(e.world_size == 1);
    CHECK(e.local_rank == 0);
  }
  auto message_of = [](std::initializer_list<std::pair<const char*, const char*>> vars) {
    scoped_env env(vars);
    try {
      gpu::launch_environment::from_env();
    } catch (const std::system_error& e) {
      CHECK(e.code() == gpu::errc::invalid_argument);
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK_THAT(message_of({{"WORLD_SIZE", "2"}}), Catch::Contains("RANK is not set"));
  CHECK_THAT(message_of({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}}),
             Catch::Contains("RANK=2 is outside [0, 1]"));
  CHECK_THAT(message_of({{"RANK", "x"}, {"WORLD_SIZE", "2"}}), Catch::Contains("not an integer"));
  CHECK_THAT(message_of({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "29500"}}),
             Catch::Contains("MASTER_ADDR is not set"));
  CHECK_THAT(message_of({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}}),
             Catch::Contains("MASTER_PORT=70000 is outside"));
}

TEST_CASE("exchange_id: rank 0 makes the id, a peer fetches it", "[gpu][rendezvous]") {
  std::uint16_t port = 0;
  {
    gpu::id_server probe("127.0.0.1", 0);
    port = probe.port();
  }
  const auto id = random_id(128);
  gpu::launch_environment r0{0, 2, 0, "127.0.0.1", port};
  gpu::launch_environment r1{1, 2, 1, "127.0.0.1", port};
  auto peer = std::async(std::launch::async, [&] {
    return gpu::exchange_id(r1, 128, [] { return std::vector<std::byte>(128); }, {5000ms});
  });
  int made = 0;
  auto mine = gpu::exchange_id(r0, 128, [&] { ++made; return id; }, {5000ms});
  CHECK(mine == id);
  CHECK(peer.get() == id);
  CHECK(made == 1);
  CHECK(code_of([&] { gpu::exchange_id({0, 1, 0, "", 0}, 128, [] { return std::vector<std::byte>(5); }); }) ==
        gpu::errc::invalid_argument);
}
