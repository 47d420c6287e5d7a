#include "cobatch/engine/dispatch/capture_ladder.hpp"

#include <string>

#include "cobatch/engine/dispatch/dispatch_key.hpp"
#include "cobatch/engine/error.hpp"

namespace cobatch::engine {

capture_ladder capture_ladder::standard(std::uint32_t max_size) {
  if (max_size == 0 || max_size > dispatch_key::max_tokens)
    throw_engine_error(errc::invalid_argument,
                       "capture_ladder::standard: max_size " + std::to_string(max_size) + " is outside 1.." +
                           std::to_string(dispatch_key::max_tokens));
  std::vector<std::uint32_t> sizes;
  auto add = [&](std::uint32_t s) {
    if (s <= max_size) sizes.push_back(s);
  };
  add(1);
  add(2);
  add(4);
  for (std::uint32_t s = 8; s <= 256; s += 8) add(s);
  for (std::uint32_t s = 272; s <= max_size; s += 16) add(s);
  if (sizes.back() != max_size) sizes.push_back(max_size);
  return capture_ladder(sizes);
}

capture_ladder::capture_ladder(std::span<const std::uint32_t> sizes) {
  if (sizes.empty()) throw_engine_error(errc::invalid_argument, "capture_ladder: the list of sizes is empty");
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const auto s = sizes[i];
    const std::string where = "capture_ladder: size " + std::to_string(s) + " at index " + std::to_string(i);
    if (s == 0) throw_engine_error(errc::invalid_argument, where + " is zero; sizes must be positive");
    if (s > dispatch_key::max_tokens)
      throw_engine_error(errc::invalid_argument,
                         where + " exceeds the largest key size " + std::to_string(dispatch_key::max_tokens));
    if (i > 0 && s == sizes[i - 1]) throw_engine_error(errc::invalid_argument, where + " is a duplicate");
    if (i > 0 && s < sizes[i - 1])
      throw_engine_error(errc::invalid_argument,
                         where + " is smaller than its predecessor " + std::to_string(sizes[i - 1]) +
                             "; sizes must be sorted ascending");
  }
  sizes_.assign(sizes.begin(), sizes.end());
  padded_.assign(std::size_t{sizes_.back()} + 1, 0);
  std::uint32_t next = 0;
  for (const auto s : sizes_) {
    for (std::uint32_t t = next + 1; t <= s; ++t) padded_[t] = s;
    next = s;
  }
}

}  // namespace cobatch::engine
