// Drawing a token from logits: greedy, or temperature and top-p with a
// generator seeded from (seed, output index), so that the draw of a request's
// n-th token does not depend on what else ran in its step.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace cobatch::model {

/// Greedy when temperature == 0 (argmax, the lowest id on ties); otherwise
/// softmax(logits / temperature), the smallest set of most likely tokens
/// whose probability reaches top_p, and one draw from it. `scratch` is reused
/// between calls. Inputs are checked by the engine (engine::validate).
std::int32_t sample_token(std::span<const float> logits, float temperature, float top_p, std::uint64_t seed,
                          std::int32_t sample_index, std::vector<std::int32_t>& scratch);

/// The uniform draw in [0, 1) used for (seed, index).
double uniform_draw(std::uint64_t seed, std::int32_t index) noexcept;

}  // namespace cobatch::model
