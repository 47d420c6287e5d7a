// Private to the engine's sources: the batch check behind validate_batch,
// shared with planners that must report through either error path.
#pragma once

#include <cobatch/engine/batch.hpp>

#include "message.hpp"

#include <string>

namespace cobatch::engine::detail {

/// Fills `shape` and returns no fault when `batch` is valid; otherwise the
/// fault, with the text in *detail where detail is not null.
fault check_batch(const batch_view& batch, batch_shape& shape, std::string* detail);

}  // namespace cobatch::engine::detail
