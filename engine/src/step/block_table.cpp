#include "cobatch/engine/step/block_table.hpp"

#include "message.hpp"

#include <algorithm>
#include <cstring>
#include <limits>

namespace cobatch::engine {

block_table::block_table(std::int32_t num_pages) : num_pages_(num_pages) {
  if (num_pages < 1)
    throw_engine_error(errc::invalid_argument, detail::cat("block_table: num_pages=", num_pages, " < 1"));
  const std::int64_t capacity = capacity_for(num_pages);
  if (capacity > std::numeric_limits<std::int32_t>::max())
    throw_engine_error(errc::overflow,
                       detail::cat("block_table: ", capacity, " entries for ", num_pages, " pages exceed int32 offsets"));
  entries_.assign(static_cast<std::size_t>(capacity), -1);
}

void block_table::log(std::int32_t offset, std::int32_t count) {
  if (count > 0) writes_.push_back({offset, count});
}

std::int32_t block_table::place(std::int32_t room) {
  if (room > capacity() - end_) {
    compact();
    // Live rows take at most half the capacity (twice the pages they hold)
    // and no row more than 2 x num_pages, which the other half holds.
    if (room > capacity() - end_)
      throw_engine_error(errc::no_capacity, detail::cat("block_table: a row of ", room, " entries does not fit the ",
                                                        capacity() - end_, " free after compaction"));
  }
  const std::int32_t at = end_;
  end_ += room;
  return at;
}

void block_table::append(std::uint32_t r, std::span<const std::int32_t> pages) {
  if (pages.empty()) return;
  const auto n = static_cast<std::int32_t>(pages.size());
  if (r >= rows_.size()) rows_.resize(static_cast<std::size_t>(r) + 1);
  if (n > num_pages_ - held_pages_)
    throw_engine_error(errc::no_capacity, detail::cat("block_table::append: row ", r, " asks for ", n, " pages; ",
                                                      held_pages_, " of ", num_pages_, " are held"));
  held_pages_ += n;
  const std::int32_t count = rows_[r].count;
  if (count + n > rows_[r].room) {
    // Moves to the end with room to double; place() may compact, which
    // moves this row too, so its offset is read after.
    const std::int32_t room = 2 * (count + n);
    const std::int32_t at = place(room);
    row_info& x = rows_[r];
    if (count > 0)
      std::memmove(entries_.data() + at, entries_.data() + x.offset, static_cast<std::size_t>(count) * sizeof(std::int32_t));
    x.offset = at;
    x.room = room;
    std::memcpy(entries_.data() + at + count, pages.data(), pages.size_bytes());
    x.count = count + n;
    log(at, count + n);
    return;
  }
  row_info& x = rows_[r];
  std::memcpy(entries_.data() + x.offset + count, pages.data(), pages.size_bytes());
  x.count = count + n;
  log(x.offset + count, n);
}

void block_table::release(std::uint32_t r) noexcept {
  if (r >= rows_.size() || rows_[r].room == 0) return;
  held_pages_ -= rows_[r].count;
  rows_[r] = row_info{};
}

void block_table::compact() {
  ++compactions_;
  scratch_.clear();
  for (std::uint32_t r = 0; r < rows_.size(); ++r)
    if (rows_[r].room > 0) scratch_.push_back(r);
  std::sort(scratch_.begin(), scratch_.end(), [&](std::uint32_t a, std::uint32_t b) { return rows_[a].offset < rows_[b].offset; });
  // In offset order every row moves down (or stays), so memmove never
  // overwrites a row not moved yet.
  std::int32_t at = 0;
  for (std::uint32_t r : scratch_) {
    row_info& x = rows_[r];
    if (x.offset != at && x.count > 0)
      std::memmove(entries_.data() + at, entries_.data() + x.offset, static_cast<std::size_t>(x.count) * sizeof(std::int32_t));
    x.offset = at;
    at += x.room;
  }
  end_ = at;
  // Every live entry may have moved: one write covers them all, and the
  // earlier writes name offsets that mean nothing now.
  writes_.assign(1, block_range{0, end_});
}

}  // namespace cobatch::engine
