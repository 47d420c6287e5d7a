// A run loop, its completion reactor and a host device on them: what the
// host-backend and engine tests start from.
#pragma once

#include "device_fixture.hpp"

#include "cobatch/gpu/host/host_device.hpp"
#include "cobatch/gpu/stream_pool.hpp"

namespace cobatch::test {

using host_fixture = device_fixture<gpu::host::host_device>;

/// With a pool of two streams per role, so that tests can hold one stream
/// of a role and watch work go to, or wait for, the other.
struct host_pool_fixture : host_fixture {
  gpu::stream_pool pool{dev, {.compute_streams = 2, .communication_streams = 2}};
};

}  // namespace cobatch::test
