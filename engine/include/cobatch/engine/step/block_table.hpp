// block_table: the KV page ids of every request that holds pages, kept from
// step to step, so that a step writes only what changed.
//
// Why not rebuild a CSR table every step: a decode's pages change once every
// page_size tokens, yet a table rebuilt per step copies every page of every
// running request each step (256 decodes at 2.6k tokens of context: 41k ids,
// the larger part of a step's planning). Here each request owns a row, a
// contiguous run of entries in one flat array; a row holds its pages in token
// order and has room to grow (capacity doubling). A step appends a page where
// a decode crosses into a new one and writes the rows of requests admitted;
// a request that leaves only gives its row back. writes() lists the entries
// written since clear_writes(), so that a consumer keeping a copy (the step
// runner's persistent device-side table) applies those and nothing else.
//
// Rows are placed by a bump pointer; a row that outgrows its capacity moves
// to the end (its pages copied once: amortised O(1) per page appended). When
// the end reaches the capacity, the live rows are compacted to the front
// (one pass over the live entries, logged as one write; at least half the
// capacity is free afterwards, so compactions are rare). The capacity,
// capacity_for(num_pages), holds twice the worst live footprint: rows never
// hold more than the pool's pages together, and each row's room is at most
// twice its pages (a row holds at least one; an empty row takes no room), so
// it does not depend on how many requests hold pages at once.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace cobatch::engine {

/// Entries [offset, offset + count) of a block_table.
struct block_range {
  std::int32_t offset = 0;
  std::int32_t count = 0;
  friend bool operator==(const block_range&, const block_range&) = default;
};

class block_table {
 public:
  /// Entries a table needs for rows holding at most `num_pages` pages in all.
  static constexpr std::int64_t capacity_for(std::int32_t num_pages) noexcept {
    return 4 * static_cast<std::int64_t>(num_pages);
  }

  /// Throws engine_error(invalid_argument) when num_pages < 1, or
  /// errc::overflow when the capacity exceeds int32 offsets.
  explicit block_table(std::int32_t num_pages);

  /// Appends `pages` to row `row` (any index; rows are created on first use).
  /// Throws engine_error(no_capacity), changing nothing, when the rows would
  /// hold more than num_pages pages.
  void append(std::uint32_t row, std::span<const std::int32_t> pages);
  /// Empties row `row`; its entries are dead until the next compaction.
  void release(std::uint32_t row) noexcept;

  std::span<const std::int32_t> row(std::uint32_t r) const noexcept {
    return {entries_.data() + begin(r), static_cast<std::size_t>(size(r))};
  }
  /// Offset of row `r`'s first entry in entries() (0 for an empty row).
  std::int32_t begin(std::uint32_t r) const noexcept { return r < rows_.size() ? rows_[r].offset : 0; }
  std::int32_t size(std::uint32_t r) const noexcept { return r < rows_.size() ? rows_[r].count : 0; }

  /// Entries [0, end of the last row placed): what a copy must hold.
  std::span<const std::int32_t> entries() const noexcept { return {entries_.data(), static_cast<std::size_t>(end_)}; }
  std::int32_t capacity() const noexcept { return static_cast<std::int32_t>(entries_.size()); }
  /// Ranges of entries() written since the last clear_writes(), oldest first
  /// (they may overlap; applying them in order gives entries()).
  std::span<const block_range> writes() const noexcept { return writes_; }
  void clear_writes() noexcept { writes_.clear(); }
  std::uint64_t compactions() const noexcept { return compactions_; }

 private:
  struct row_info {
    std::int32_t offset = 0;
    std::int32_t count = 0;
    std::int32_t room = 0;  // 0: holds no entries
  };
  std::int32_t place(std::int32_t room);
  void compact();
  void log(std::int32_t offset, std::int32_t count);

  std::int32_t num_pages_;
  std::vector<std::int32_t> entries_;
  std::vector<row_info> rows_;
  std::vector<block_range> writes_;
  std::vector<std::uint32_t> scratch_;
  std::int32_t end_ = 0;
  std::int32_t held_pages_ = 0;
  std::uint64_t compactions_ = 0;
};

}  // namespace cobatch::engine
