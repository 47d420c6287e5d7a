#include "cobatch/engine/ubatch/token_rows.hpp"

#include "message.hpp"

namespace cobatch::engine::detail {

void throw_bad_row_range(std::int64_t begin, std::int64_t end, std::int64_t rows) {
  throw_engine_error(errc::invalid_argument,
                     cat("token_rows::rows: rows [", begin, ", ", end, ") are not within a view of ", rows, " rows"));
}

void throw_bad_row_shape(const void* data, std::int64_t rows, std::int64_t columns,
                         std::int64_t row_stride) {
  if (rows < 0 || columns < 0) {
    throw_engine_error(errc::negative_length,
                       cat("token_rows: shape rows=", rows, " columns=", columns, " is negative"));
  }
  if (row_stride < columns) {
    throw_engine_error(errc::invalid_argument, cat("token_rows: row_stride=", row_stride,
                                                   " is less than columns=", columns,
                                                   ": rows would overlap"));
  }
  (void)data;
  throw_engine_error(errc::invalid_argument,
                     cat("token_rows: data is null but the shape is ", rows, " x ", columns));
}

void throw_not_contiguous(std::int64_t rows, std::int64_t columns, std::int64_t row_stride) {
  throw_engine_error(errc::invalid_argument,
                     cat("token_rows::as_span: a view of ", rows, " x ", columns, " with row_stride=", row_stride,
                         " is not contiguous, so it has no span form"));
}

}  // namespace cobatch::engine::detail
