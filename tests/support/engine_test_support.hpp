// Helpers shared by the engine tests: batches built from per-request
// lengths, and the engine_error an expression throws.
#pragma once

#include <cobatch/engine/batch.hpp>
#include <cobatch/engine/error.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

namespace cobatch::engine::test {

/// Owns the arrays a batch_view borrows.
struct owned_batch {
  std::vector<std::int32_t> query_start_loc;
  std::vector<std::int32_t> seq_lens;

  owned_batch(const std::vector<std::int32_t>& query_lens, std::vector<std::int32_t> seqs)
      : seq_lens(std::move(seqs)) {
    query_start_loc.push_back(0);
    for (std::int32_t q : query_lens) query_start_loc.push_back(query_start_loc.back() + q);
  }
  /// seq_len == query_len + context for every request.
  static owned_batch with_context(const std::vector<std::int32_t>& query_lens, std::int32_t context) {
    std::vector<std::int32_t> seqs;
    for (std::int32_t q : query_lens) seqs.push_back(q + context);
    return owned_batch(query_lens, seqs);
  }
  std::int32_t num_tokens() const { return query_start_loc.back(); }
  batch_view view() const { return {query_start_loc, seq_lens, num_tokens()}; }
};

/// The engine_error (or the subclass E of it, e.g. ubatch_error) `f`
/// throws; fails the test when it throws nothing. Another exception passes
/// through, failing the test with its own message.
template <class E = engine_error, class F>
E thrown_by(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e;
  }
  FAIL("expected an engine_error, none was thrown");
  throw;  // unreachable: FAIL throws
}

}  // namespace cobatch::engine::test
