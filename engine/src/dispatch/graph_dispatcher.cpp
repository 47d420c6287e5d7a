#include "cobatch/engine/dispatch/graph_dispatcher.hpp"

namespace cobatch::engine {

std::string_view to_string(dispatch_outcome outcome) noexcept {
  switch (outcome) {
    case dispatch_outcome::replayed: return "replayed";
    case dispatch_outcome::captured: return "captured";
    case dispatch_outcome::eager: return "eager";
    case dispatch_outcome::eager_fallback: return "eager_fallback";
  }
  return "unknown";
}

}  // namespace cobatch::engine
