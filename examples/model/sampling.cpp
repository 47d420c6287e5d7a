#include "sampling.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace cobatch::model {

namespace {
std::uint64_t splitmix(std::uint64_t x) noexcept {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

double uniform_draw(std::uint64_t seed, std::int32_t index) noexcept {
  const std::uint64_t bits = splitmix(splitmix(seed) ^ static_cast<std::uint64_t>(static_cast<std::uint32_t>(index)));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

std::int32_t sample_token(std::span<const float> logits, float temperature, float top_p, std::uint64_t seed,
                          std::int32_t sample_index, std::vector<std::int32_t>& scratch) {
  const auto n = static_cast<std::int32_t>(logits.size());
  if (temperature <= 0.0f) {
    std::int32_t best = 0;
    for (std::int32_t i = 1; i < n; ++i)
      if (logits[static_cast<std::size_t>(i)] > logits[static_cast<std::size_t>(best)]) best = i;
    return best;
  }
  scratch.resize(logits.size());
  std::iota(scratch.begin(), scratch.end(), 0);
  // Ties broken by id, so the order (and the draw) is the same everywhere.
  std::sort(scratch.begin(), scratch.end(), [&](std::int32_t a, std::int32_t b) {
    const float la = logits[static_cast<std::size_t>(a)], lb = logits[static_cast<std::size_t>(b)];
    return la != lb ? la > lb : a < b;
  });
  const double top = logits[static_cast<std::size_t>(scratch[0])];
  double total = 0.0;
  for (std::int32_t id : scratch) total += std::exp((logits[static_cast<std::size_t>(id)] - top) / temperature);
  // The nucleus: the fewest tokens whose probability reaches top_p.
  double mass = 0.0;
  std::size_t keep = 0;
  while (keep < scratch.size()) {
    mass += std::exp((logits[static_cast<std::size_t>(scratch[keep])] - top) / temperature) / total;
    ++keep;
    if (mass >= static_cast<double>(top_p)) break;
  }
  const double u = uniform_draw(seed, sample_index) * mass;
  double acc = 0.0;
  for (std::size_t i = 0; i < keep; ++i) {
    acc += std::exp((logits[static_cast<std::size_t>(scratch[i])] - top) / temperature) / total;
    if (u < acc) return scratch[i];
  }
  return scratch[keep - 1];
}

}  // namespace cobatch::model
