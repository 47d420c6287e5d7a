// page_table: which pages of the KV cache hold each request's tokens, in the
// CSR form FlashInfer uses: request i's pages are indices[indptr[i] ..
// indptr[i+1]), in token order; page p holds tokens [p_k * page_size,
// (p_k + 1) * page_size) of the request (of this rank's DCP shard), the last
// page possibly partly filled.
//
// Why CSR and not vLLM's block table ([num_reqs][max_blocks], padded): the
// contexts of a batch are ragged (a few 32k requests next to many short
// ones); CSR holds exactly the pages in use (a 4096-request batch with a 32k
// maximum needs 4096 x 2048 block-table entries, 32 MiB, against the sum of
// the requests' pages), a request's pages are one contiguous slice (what the
// KV hand-off and the kernels read), and the page count of each request is
// checked against its length in one pass over indptr. FlashInfer's third
// array (last_page_len) is not needed: the length of each request's shard
// follows from seq_lens and the DCP layout, and the plan checks that the
// page counts agree with it.
#pragma once

#include <cobatch/engine/error.hpp>

#include <cstdint>
#include <span>
#include <vector>

namespace cobatch::engine {

class page_table;

/// A borrowed CSR page table. The spans must outlive every plan made from it
/// and stay unchanged until the runs of those plans have completed (a run
/// copies the indices to the device).
class page_table_view {
 public:
  page_table_view() noexcept = default;
  page_table_view(std::span<const std::int32_t> indptr, std::span<const std::int32_t> indices) noexcept
      : indptr_(indptr), indices_(indices) {}

  std::span<const std::int32_t> indptr() const noexcept { return indptr_; }
  std::span<const std::int32_t> indices() const noexcept { return indices_; }
  std::int32_t num_reqs() const noexcept {
    return indptr_.empty() ? 0 : static_cast<std::int32_t>(indptr_.size() - 1);
  }
  /// Pages of request i (unchecked).
  std::span<const std::int32_t> pages(std::int32_t i) const noexcept {
    const auto b = static_cast<std::size_t>(indptr_[static_cast<std::size_t>(i)]);
    const auto e = static_cast<std::size_t>(indptr_[static_cast<std::size_t>(i) + 1]);
    return indices_.subspan(b, e - b);
  }
  /// Nonzero when every index was checked to be in [0, checked_num_pages())
  /// when it was written (a view of a page_table); 0 for a view made from
  /// raw spans, whose indices a plan checks one by one.
  std::int32_t checked_num_pages() const noexcept { return checked_num_pages_; }

 private:
  friend class page_table;
  std::span<const std::int32_t> indptr_;
  std::span<const std::int32_t> indices_;
  std::int32_t checked_num_pages_ = 0;
};

/// An owning CSR page table for a cache of `num_pages` pages, built request by
/// request. Each index is checked as it is added, so a plan made from its
/// view checks the per-request page counts (one pass over the requests) but
/// not the indices again: the check is paid once, where the page was handed
/// out, not on every step. clear() keeps the capacity.
class page_table {
 public:
  explicit page_table(std::int32_t num_pages);

  /// Appends a request with these pages. Throws engine_error
  /// (errc::invalid_argument) naming the index and its position when one is
  /// outside [0, num_pages); errc::overflow past 2^31 - 1 pages in all.
  void add_request(std::span<const std::int32_t> pages);
  void clear() noexcept;
  void reserve(std::size_t requests, std::size_t pages);

  std::int32_t num_pages() const noexcept { return num_pages_; }
  std::int32_t num_reqs() const noexcept { return static_cast<std::int32_t>(indptr_.size() - 1); }
  page_table_view view() const noexcept;

 private:
  std::int32_t num_pages_;
  std::vector<std::int32_t> indptr_;
  std::vector<std::int32_t> indices_;
};

}  // namespace cobatch::engine
