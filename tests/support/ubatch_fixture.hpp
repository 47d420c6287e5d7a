// A host device with a stream pool and a ubatch_scheduler on it: what the
// micro-batch scheduler tests start from.
#pragma once

#include "host_fixture.hpp"

#include "cobatch/engine/ubatch/ubatch_scheduler.hpp"

namespace cobatch::test {

struct ubatch_fixture : host_pool_fixture {
  engine::ubatch_scheduler scheduler{dev, pool};
};

}  // namespace cobatch::test
