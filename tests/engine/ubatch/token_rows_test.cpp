#include <cobatch/engine/ubatch/token_rows.hpp>

#include "engine_test_support.hpp"

#include <catch2/catch.hpp>

#include <numeric>
#include <type_traits>
#include <vector>

using namespace cobatch::engine;
using cobatch::engine::test::thrown_by;

TEST_CASE("token_rows views 2-D rows in place, with a stride", "[engine][token_rows]") {
  // 5 rows of 3 used columns inside rows of 4: a column slice of a wider tensor.
  std::vector<float> storage(20);
  std::iota(storage.begin(), storage.end(), 0.0f);
  const token_rows<float> all(storage.data(), 5, 3, 4);
  CHECK(all.num_rows() == 5);
  CHECK(all.num_columns() == 3);
  CHECK(all.row_stride() == 4);
  CHECK(all(2, 1) == 9.0f);
  CHECK(all.row(4).size() == 3);
  CHECK(all.row(4)[0] == 16.0f);

  const token_rows<float> mid = all.rows(1, 4);
  CHECK(mid.num_rows() == 3);
  CHECK(mid.data() == storage.data() + 4);  // same memory, not a copy
  CHECK(mid(0, 0) == 4.0f);
  mid(2, 2) = -1.0f;
  CHECK(storage[3 * 4 + 2] == -1.0f);

  CHECK(all.rows(5, 5).empty());
  CHECK(all.rows(0, 0).data() == storage.data());
}

TEST_CASE("token_rows wraps 1-D spans and converts to const", "[engine][token_rows]") {
  std::vector<std::int32_t> ids{10, 11, 12, 13};
  const token_rows rows{std::span(ids)};
  static_assert(std::is_same_v<decltype(rows), const token_rows<std::int32_t>>);
  CHECK(rows.num_rows() == 4);
  CHECK(rows.num_columns() == 1);
  CHECK(rows.row_stride() == 1);
  const token_rows<const std::int32_t> view = rows.rows(1, 3);
  const std::span<const std::int32_t> s = view.as_span();
  CHECK(s.data() == ids.data() + 1);
  CHECK(s.size() == 2);
  CHECK(s[1] == 12);
  static_assert(!std::is_convertible_v<token_rows<const int>, token_rows<int>>);
}

TEST_CASE("token_rows rejects bad shapes and ranges", "[engine][token_rows]") {
  std::vector<float> storage(12);
  const token_rows<float> all(storage.data(), 3, 2, 4);

  engine_error e = thrown_by([&] { (void)all.rows(2, 4); });
  CHECK(e.code() == errc::invalid_argument);
  CHECK_THAT(e.what(), Catch::Matchers::Contains("rows [2, 4) are not within a view of 3 rows"));
  CHECK(thrown_by([&] { (void)all.rows(-1, 1); }).code() == errc::invalid_argument);
  CHECK(thrown_by([&] { (void)all.rows(2, 1); }).code() == errc::invalid_argument);

  e = thrown_by([&] { token_rows<float>(storage.data(), -1, 2); });
  CHECK(e.code() == errc::negative_length);
  CHECK_THAT(e.what(), Catch::Matchers::Contains("rows=-1 columns=2 is negative"));
  e = thrown_by([&] { token_rows<float>(storage.data(), 2, 4, 3); });
  CHECK(e.code() == errc::invalid_argument);
  CHECK_THAT(e.what(), Catch::Matchers::Contains("row_stride=3 is less than columns=4"));
  e = thrown_by([&] { token_rows<float>(nullptr, 2, 4); });
  CHECK(e.code() == errc::invalid_argument);
  CHECK_THAT(e.what(), Catch::Matchers::Contains("data is null but the shape is 2 x 4"));

  e = thrown_by([&] { (void)all.as_span(); });
  CHECK(e.code() == errc::invalid_argument);
  CHECK_THAT(e.what(), Catch::Matchers::Contains("is not contiguous"));
  CHECK(all.rows(1, 2).as_span().size() == 2);  // one row is contiguous whatever the stride
}
