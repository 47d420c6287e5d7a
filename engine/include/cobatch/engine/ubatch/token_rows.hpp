// A non-owning view of per-token rows (ids, positions, embeddings,
// intermediate tensors), so that a micro-batch reads its slice of the step's
// inputs in place instead of copying them.
#pragma once

#include <cobatch/engine/error.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

namespace cobatch::engine {

namespace detail {
// Out of line so that the template below stays small and the message is only
// built on failure.
[[noreturn]] void throw_bad_row_range(std::int64_t begin, std::int64_t end, std::int64_t rows);
[[noreturn]] void throw_bad_row_shape(const void* data, std::int64_t rows, std::int64_t columns,
                                      std::int64_t row_stride);
[[noreturn]] void throw_not_contiguous(std::int64_t rows, std::int64_t columns, std::int64_t row_stride);
}  // namespace detail

/// `rows` rows of `columns` elements of T, row r starting at data + r * row_stride.
/// A 1-D input (token ids, positions) is one column with stride 1; a 2-D one
/// (hidden states, rows x hidden) may have a stride larger than its width when
/// it is a column slice of a wider tensor.
///
/// Like std::span it is cheap to copy and never owns; T may be const.
/// Slicing checks its bounds; element access does not (as span's operator[]).
template <class T>
class token_rows {
 public:
  using element_type = T;

  constexpr token_rows() noexcept = default;

  /// Throws engine_error (errc::negative_length for negative extents,
  /// errc::invalid_argument for a stride narrower than a row, or null data
  /// with rows) so that a wrong shape is caught where it is described.
  constexpr token_rows(T* data, std::int64_t rows, std::int64_t columns, std::int64_t row_stride)
      : data_(data), rows_(rows), columns_(columns), row_stride_(row_stride) {
    if (rows < 0 || columns < 0 || row_stride < columns || (data == nullptr && rows > 0 && columns > 0)) {
      detail::throw_bad_row_shape(data, rows, columns, row_stride);
    }
  }

  /// A densely packed rows x columns block.
  constexpr token_rows(T* data, std::int64_t rows, std::int64_t columns)
      : token_rows(data, rows, columns, columns) {}

  /// The 1-D case: one element per token.
  template <class U, std::size_t Extent>
    requires std::is_convertible_v<U (*)[], T (*)[]>
  constexpr explicit token_rows(std::span<U, Extent> tokens)
      : token_rows(tokens.data(), static_cast<std::int64_t>(tokens.size()), 1, 1) {}

  /// token_rows<T> converts to token_rows<const T>, as span does.
  template <class U>
    requires(!std::is_same_v<U, T> && std::is_convertible_v<U (*)[], T (*)[]>)
  constexpr token_rows(const token_rows<U>& other) noexcept
      : data_(other.data()), rows_(other.num_rows()), columns_(other.num_columns()),
        row_stride_(other.row_stride()) {}

  constexpr T* data() const noexcept { return data_; }
  constexpr std::int64_t num_rows() const noexcept { return rows_; }
  constexpr std::int64_t num_columns() const noexcept { return columns_; }
  /// Distance between the starts of consecutive rows, in elements.
  constexpr std::int64_t row_stride() const noexcept { return row_stride_; }
  constexpr bool empty() const noexcept { return rows_ == 0; }

  /// Row r as a span of num_columns() elements. Unchecked.
  constexpr std::span<T> row(std::int64_t r) const noexcept {
    return {data_ + r * row_stride_, static_cast<std::size_t>(columns_)};
  }
  constexpr T& operator()(std::int64_t r, std::int64_t c) const noexcept { return data_[r * row_stride_ + c]; }

  /// Rows [begin, end) of this view, sharing its memory. Throws engine_error
  /// (errc::invalid_argument) naming the range and the row count when the
  /// range is reversed or outside [0, num_rows()].
  constexpr token_rows rows(std::int64_t begin, std::int64_t end) const {
    if (begin < 0 || end < begin || end > rows_) detail::throw_bad_row_range(begin, end, rows_);
    token_rows out;
    out.data_ = data_ + begin * row_stride_;
    out.rows_ = end - begin;
    out.columns_ = columns_;
    out.row_stride_ = row_stride_;
    return out;
  }

  /// All elements as one span, for the 1-D case and packed 2-D blocks. Throws
  /// engine_error (errc::invalid_argument) where rows have gaps between them.
  constexpr std::span<T> as_span() const {
    if (columns_ != row_stride_ && rows_ > 1) detail::throw_not_contiguous(rows_, columns_, row_stride_);
    return {data_, static_cast<std::size_t>(rows_ * columns_)};
  }

 private:
  T* data_ = nullptr;
  std::int64_t rows_ = 0;
  std::int64_t columns_ = 0;
  std::int64_t row_stride_ = 0;
};

template <class U, std::size_t Extent>
token_rows(std::span<U, Extent>) -> token_rows<U>;

}  // namespace cobatch::engine
