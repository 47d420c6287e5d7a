// A run loop, its completion reactor and a host device on them: what the
// host-backend and engine tests start from.
#pragma once

#include "cobatch/coro/completion_reactor.hpp"
#include "cobatch/coro/run_loop.hpp"
#include "cobatch/gpu/host/host_device.hpp"

namespace cobatch::test {

struct host_fixture {
  coro::run_loop loop;
  coro::completion_reactor reactor{loop.get_executor()};
  gpu::host::host_device dev{reactor};
  host_fixture() { loop.attach(reactor); }
};

}  // namespace cobatch::test
