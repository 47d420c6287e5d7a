// The gap between the two largest logits: how far apart they must be before
// two computations of the same logits, within a tolerance, must pick the
// same greedy token.
#pragma once

#include <cmath>
#include <span>

namespace cobatch::test {

inline float top2_gap(std::span<const float> logits) {
  float a = -INFINITY, b = -INFINITY;
  for (float x : logits) {
    if (x > a) {
      b = a;
      a = x;
    } else if (x > b) {
      b = x;
    }
  }
  return a - b;
}

}  // namespace cobatch::test
