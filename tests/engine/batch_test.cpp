#include <cobatch/engine/batch.hpp>

#include "engine_test_support.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

using namespace cobatch::engine;
using cobatch::engine::test::owned_batch;
using cobatch::engine::test::thrown_by;

namespace {

// The code and the detail text of what validate_batch throws for `b`, and
// the same code from the error_code overload.
void require_rejected(const batch_view& b, errc code, const std::string& text) {
  const engine_error e = thrown_by([&] { validate_batch(b); });
  CHECK(e.code() == code);
  CHECK_THAT(e.what(), Catch::Matchers::Contains(text));
  std::error_code ec;
  const batch_shape shape = validate_batch(b, ec);
  CHECK(ec == code);
  CHECK(shape.num_reqs == 0);
  CHECK(shape.num_tokens == 0);
}

}  // namespace

TEST_CASE("a valid batch is described in one pass", "[engine][batch]") {
  const owned_batch b({3, 1, 0, 5}, {10, 1, 4, 5});
  const batch_shape s = validate_batch(b.view());
  CHECK(s.num_reqs == 4);
  CHECK(s.num_tokens == 9);
  CHECK(s.min_query_len == 0);
  CHECK(s.max_query_len == 5);
  CHECK_FALSE(s.is_uniform(1));

  std::error_code ec = make_error_code(errc::overflow);
  const batch_shape again = validate_batch(b.view(), ec);
  CHECK_FALSE(ec);
  CHECK(again.num_tokens == 9);
}

TEST_CASE("uniform decode is every request at the same query length", "[engine][batch]") {
  const owned_batch decode = owned_batch::with_context({1, 1, 1}, 7);
  CHECK(validate_batch(decode.view()).is_uniform(1));
  CHECK_FALSE(validate_batch(decode.view()).is_uniform(2));
  const owned_batch spec = owned_batch::with_context({3, 3}, 7);
  CHECK(validate_batch(spec.view()).is_uniform(3));
  CHECK_FALSE(validate_batch(spec.view()).is_uniform(1));
}

TEST_CASE("batch_view exposes per-request query lengths", "[engine][batch]") {
  const owned_batch b({3, 0, 2}, {3, 9, 4});
  CHECK(b.view().num_reqs() == 3);
  CHECK(b.view().query_len(0) == 3);
  CHECK(b.view().query_len(1) == 0);
  CHECK(b.view().query_len(2) == 2);
}

TEST_CASE("bad batches are rejected naming the offending value", "[engine][batch]") {
  const std::vector<std::int32_t> loc{0, 3, 9, 7, 10};
  const std::vector<std::int32_t> seqs{3, 6, 1, 3};

  SECTION("no requests") {
    require_rejected({{}, {}, 0}, errc::empty_batch, "batch has no requests");
    const std::vector<std::int32_t> zero{0};
    require_rejected({zero, {}, 0}, errc::empty_batch, "query_start_loc has 1 entries, seq_lens has 0");
  }
  SECTION("offsets and seq_lens of different lengths") {
    require_rejected({std::span(loc).first(4), seqs, 7}, errc::length_mismatch,
                     "query_start_loc has 4 entries; seq_lens has 4 so it needs 5");
  }
  SECTION("negative and zero token counts") {
    const std::vector<std::int32_t> l{0, 0};
    const std::vector<std::int32_t> s{0};
    require_rejected({l, s, -2}, errc::negative_length, "num_tokens=-2 is negative");
    require_rejected({l, s, 0}, errc::empty_batch, "num_tokens=0");
  }
  SECTION("first offset not zero") {
    const std::vector<std::int32_t> l{1, 4};
    const std::vector<std::int32_t> s{3};
    require_rejected({l, s, 4}, errc::invalid_argument, "query_start_loc[0]=1 must be 0");
  }
  SECTION("last offset differs from num_tokens") {
    const std::vector<std::int32_t> l{0, 4};
    const std::vector<std::int32_t> s{4};
    require_rejected({l, s, 5}, errc::length_mismatch, "query_start_loc[1]=4 differs from num_tokens=5");
  }
  SECTION("decreasing offsets") {
    require_rejected({loc, seqs, 10}, errc::negative_length,
                     "query_start_loc[3]=7 is less than query_start_loc[2]=9");
  }
  SECTION("seq_len shorter than its query") {
    const std::vector<std::int32_t> l{0, 2, 6};
    const std::vector<std::int32_t> s{2, 3};
    require_rejected({l, s, 6}, errc::length_mismatch, "seq_lens[1]=3 is less than request 1's query length 4");
  }
  SECTION("negative seq_len") {
    const std::vector<std::int32_t> l{0, 0, 6};
    const std::vector<std::int32_t> s{-1, 6};
    require_rejected({l, s, 6}, errc::negative_length, "seq_lens[0]=-1 is negative");
  }
}
