#include "cobatch/engine/dispatch/dispatch_key.hpp"

#include <catch2/catch.hpp>

#include <unordered_set>

#include "cobatch/engine/error.hpp"

using namespace cobatch::engine;

namespace {
errc code_of(const engine_error& e) { return static_cast<errc>(e.code().value()); }

template <class F>
errc thrown_code(F&& f) {
  try {
    f();
  } catch (const engine_error& e) {
    return code_of(e);
  }
  FAIL("no engine_error thrown");
  return errc::invalid_argument;
}
}  // namespace

TEST_CASE("dispatch_key fields round-trip through the packed word", "[engine][dispatch]") {
  const auto k = dispatch_key::mixed(300, 7, step_feature::lora | step_feature::custom3);
  CHECK(k.tokens() == 300);
  CHECK(k.requests() == 7);
  CHECK(k.uniform_query_len() == 0);
  CHECK_FALSE(k.is_uniform_decode());
  CHECK_FALSE(k.is_relaxed());
  CHECK(k.features() == (step_feature::lora | step_feature::custom3));

  const auto u = dispatch_key::uniform_decode(16, 4, step_feature::multimodal);
  CHECK(u.tokens() == 64);
  CHECK(u.requests() == 16);
  CHECK(u.uniform_query_len() == 4);
  CHECK(u.features() == step_feature::multimodal);

  const auto big = dispatch_key::mixed(dispatch_key::max_tokens, dispatch_key::max_requests, step_feature::custom3);
  CHECK(big.tokens() == dispatch_key::max_tokens);
  CHECK(big.requests() == dispatch_key::max_requests);
  CHECK(big.features() == step_feature::custom3);
  CHECK(dispatch_key::from_bits(big.bits()) == big);
}

TEST_CASE("uniform-decode keys differ from mixed keys of the same size", "[engine][dispatch]") {
  const auto uniform = dispatch_key::uniform_decode(8, 1);
  const auto mixed = dispatch_key::mixed(8, 8);
  CHECK(uniform.tokens() == mixed.tokens());
  CHECK(uniform.requests() == mixed.requests());
  CHECK(uniform != mixed);
  CHECK(uniform.hash() != mixed.hash());
  // Spec decode with 2 query tokens per request is yet another graph.
  CHECK(dispatch_key::uniform_decode(4, 2) != dispatch_key::mixed(8, 4));
  // Both relax to the same token-only key.
  CHECK(uniform.relaxed() == mixed.relaxed());
  CHECK(uniform.relaxed() == dispatch_key::for_tokens(8));
  CHECK(uniform.relaxed().is_relaxed());
}

TEST_CASE("relaxed keys drop requests and uniformity but keep features", "[engine][dispatch]") {
  const auto k = dispatch_key::uniform_decode(32, 2, step_feature::lora);
  const auto r = k.relaxed();
  CHECK(r.tokens() == 64);
  CHECK(r.requests() == 0);
  CHECK(r.uniform_query_len() == 0);
  CHECK(r.features() == step_feature::lora);
  CHECK(r != dispatch_key::for_tokens(64));  // a LoRA graph is not a plain graph
  CHECK(r == dispatch_key::for_tokens(64, step_feature::lora));
}

TEST_CASE("graph_key separates modes and round-trips the key", "[engine][dispatch]") {
  const auto k = dispatch_key::mixed(dispatch_key::max_tokens, dispatch_key::max_requests,
                                     step_feature::custom3 | step_feature::lora);
  const graph_key full(dispatch_mode::full, k);
  const graph_key piecewise(dispatch_mode::piecewise, k);
  CHECK(full != piecewise);
  CHECK(full.mode() == dispatch_mode::full);
  CHECK(piecewise.mode() == dispatch_mode::piecewise);
  CHECK(full.key() == k);
  CHECK(piecewise.key() == k);
  CHECK(graph_key::from_bits(full.bits()) == full);
}

TEST_CASE("dispatch_key hashes spread nearby keys", "[engine][dispatch]") {
  // Low bits of the hash index open-addressing tables: nearby token counts
  // must not collide there.
  std::unordered_set<std::uint64_t> low_bits;
  for (std::uint32_t t = 1; t <= 512; ++t) low_bits.insert(dispatch_key::for_tokens(t).hash() & 0xfff);
  CHECK(low_bits.size() > 450);  // 512 values into 4096 buckets: ~480 distinct expected
  std::unordered_set<std::uint64_t> full;
  for (std::uint32_t t = 1; t <= 512; ++t) full.insert(dispatch_key::for_tokens(t).hash());
  CHECK(full.size() == 512);
}

TEST_CASE("dispatch_key rejects bad shapes with the matching error", "[engine][dispatch]") {
  CHECK(thrown_code([] { dispatch_key::mixed(0, 1); }) == errc::empty_batch);
  CHECK(thrown_code([] { dispatch_key::mixed(4, 0); }) == errc::empty_batch);
  CHECK(thrown_code([] { dispatch_key::mixed(4, 5); }) == errc::length_mismatch);
  CHECK(thrown_code([] { dispatch_key::mixed(dispatch_key::max_tokens + 1, 1); }) == errc::overflow);
  CHECK(thrown_code([] { dispatch_key::uniform_decode(0, 1); }) == errc::empty_batch);
  CHECK(thrown_code([] { dispatch_key::uniform_decode(1, 0); }) == errc::empty_batch);
  CHECK(thrown_code([] { dispatch_key::uniform_decode(1, dispatch_key::max_query_len + 1); }) == errc::overflow);
  CHECK(thrown_code([] { dispatch_key::uniform_decode(dispatch_key::max_requests, 64); }) == errc::overflow);
  CHECK(thrown_code([] { dispatch_key::for_tokens(0); }) == errc::empty_batch);
  try {
    dispatch_key::mixed(4, 9);
    FAIL("expected a throw");
  } catch (const engine_error& e) {
    CHECK_THAT(e.what(), Catch::Contains("tokens=4") && Catch::Contains("requests=9"));
  }
}

TEST_CASE("dispatch modes validate and print", "[engine][dispatch]") {
  CHECK(to_string(dispatch_mode::eager) == "eager");
  CHECK(to_string(dispatch_mode::piecewise) == "piecewise");
  CHECK(to_string(dispatch_mode::full) == "full");
  CHECK(to_string(static_cast<dispatch_mode>(9)) == "unknown");
  CHECK_NOTHROW(validate(dispatch_mode::full));
  try {
    validate(static_cast<dispatch_mode>(7));
    FAIL("expected a throw");
  } catch (const engine_error& e) {
    CHECK(code_of(e) == errc::unknown_mode);
    CHECK_THAT(e.what(), Catch::Contains("7"));
  }
}

TEST_CASE("mode_set holds each mode once", "[engine][dispatch]") {
  mode_set s{dispatch_mode::eager, dispatch_mode::full};
  CHECK(s.size() == 2);
  CHECK(s.contains(dispatch_mode::full));
  CHECK_FALSE(s.contains(dispatch_mode::piecewise));
  s.insert(dispatch_mode::full);
  CHECK(s.size() == 2);
  s.erase(dispatch_mode::eager);
  CHECK(s.size() == 1);
  CHECK(s == mode_set{dispatch_mode::full});
  CHECK(mode_set{}.empty());
}

TEST_CASE("a uniform key padded past the request field's range becomes relaxed, never a garbage shape",
          "[engine][dispatch]") {
  const std::uint32_t rung = 1u << 21;  // a legal ladder rung above max_requests
  const auto decode = dispatch_key::uniform_decode(1000, 1, step_feature::lora);
  const dispatch_key padded = decode.padded_to(rung);
  CHECK(padded.is_relaxed());
  CHECK_FALSE(padded.is_uniform_decode());
  CHECK(padded.tokens() == rung);
  CHECK(padded.features() == step_feature::lora);
  CHECK(padded == dispatch_key::for_tokens(rung, step_feature::lora));

  const auto spec = dispatch_key::uniform_decode(1000, 3);
  const std::uint32_t spec_rung = 3 * (dispatch_key::max_requests + 1);  // requests would need 21 bits
  CHECK(spec.padded_to(spec_rung) == dispatch_key::for_tokens(spec_rung));
  // At the field's edge it still stays uniform.
  const std::uint32_t edge = 3 * dispatch_key::max_requests;
  CHECK(spec.padded_to(edge) == dispatch_key::uniform_decode(dispatch_key::max_requests, 3));
  CHECK(decode.padded_to(dispatch_key::max_requests) ==
        dispatch_key::uniform_decode(dispatch_key::max_requests, 1, step_feature::lora));
}
