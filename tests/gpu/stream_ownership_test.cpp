#include "cobatch/gpu/stream.hpp"

#include "cobatch/coro/run_loop.hpp"
#include "cobatch/gpu/error.hpp"
#include "cobatch/gpu/host/host_device.hpp"

#include <catch2/catch.hpp>

using namespace cobatch;

TEST_CASE("release() hands back a native handle, or refuses and keeps owning", "[gpu][host][stream]") {
  coro::run_loop loop;
  coro::completion_reactor reactor{loop.get_executor()};
  gpu::host::host_device dev{reactor};
  SECTION("an empty handle releases nothing") {
    gpu::stream empty;
    CHECK(empty.release() == nullptr);
    gpu::event none;
    CHECK(none.release() == nullptr);
  }
  SECTION("host streams and events have no native handle to hand over") {
    auto s = dev.make_stream();
    try {
      (void)s.release();
      FAIL("release() of a host stream did not refuse");
    } catch (const std::system_error& e) {
      CHECK(e.code() == gpu::errc::invalid_argument);
      CHECK_THAT(e.what(), Catch::Contains("stream::release()"));
    }
    CHECK(s);  // still owning
    auto e = dev.make_event();
    CHECK_THROWS_AS((void)e.release(), std::system_error);
    CHECK(e);
  }
}
