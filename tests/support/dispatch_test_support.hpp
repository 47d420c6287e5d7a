// Helpers shared by the graph dispatch tests.
#pragma once

#include <cobatch/engine/dispatch/capture_ladder.hpp>
#include <cobatch/engine/dispatch/dispatch_router.hpp>
#include <cobatch/engine/dispatch/graph_dispatcher.hpp>

#include <cstdint>
#include <utility>

namespace cobatch::engine::test {

/// A dispatcher whose router declares a piecewise graph for every size of
/// the standard capture ladder up to `max_tokens`.
template <class Graph>
graph_dispatcher<Graph> piecewise_dispatcher(std::uint32_t max_tokens) {
  dispatch_router router(capture_ladder::standard(max_tokens));
  for (std::uint32_t size : router.ladder().sizes()) router.declare(dispatch_mode::piecewise, dispatch_key::for_tokens(size));
  return graph_dispatcher<Graph>(std::move(router));
}

}  // namespace cobatch::engine::test
