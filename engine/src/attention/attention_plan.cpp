#include "cobatch/engine/attention/attention_plan.hpp"

#include "attention_check.hpp"
#include "batch_check.hpp"
#include "message.hpp"

#include <atomic>
#include <bit>
#include <cmath>
#include <limits>
#include <string>

namespace cobatch::engine {

namespace detail {

fault check_attention_config(const kv_cache_config& cache, const attention_config& c, std::string* detail) {
  if (const fault f = check_kv_cache_config(cache, detail)) return f;
  if (c.num_qo_heads < 1) {
    return fail(detail, errc::invalid_argument, "attention_config: num_qo_heads=", c.num_qo_heads, " < 1");
  }
  if (c.num_qo_heads % cache.num_kv_heads != 0) {
    return fail(detail, errc::invalid_argument, "attention_config: num_qo_heads=", c.num_qo_heads,
                " is not a multiple of num_kv_heads=", cache.num_kv_heads);
  }
  if (!std::isfinite(c.softmax_scale) || c.softmax_scale <= 0.0f) {
    return fail(detail, errc::invalid_argument, "attention_config: softmax_scale=", static_cast<double>(c.softmax_scale),
                " must be finite and > 0");
  }
  if (const fault f = check_dcp(c.dcp, "attention_config", detail)) return f;
  if (c.merge != dcp_merge::all_gather && c.merge != dcp_merge::lse_all_gather_reduce_scatter) {
    return fail(detail, errc::unknown_mode, "attention_config: merge=", static_cast<int>(c.merge),
                " is not a dcp_merge");
  }
  if (c.merge == dcp_merge::lse_all_gather_reduce_scatter && c.num_qo_heads % c.dcp.world != 0) {
    return fail(detail, errc::invalid_argument, "attention_config: num_qo_heads=", c.num_qo_heads,
                " is not divisible by dcp world=", c.dcp.world, " (the reduce-scatter merge splits heads)");
  }
  if (c.kv_chunk_pages < 0) {
    return fail(detail, errc::invalid_argument, "attention_config: kv_chunk_pages=", c.kv_chunk_pages, " < 0");
  }
  if (c.target_work_items < 0) {
    return fail(detail, errc::invalid_argument, "attention_config: target_work_items=", c.target_work_items, " < 0");
  }
  return {};
}

}  // namespace detail

namespace {

using detail::fail;
using detail::fault;

std::atomic<std::uint64_t> next_plan_id{1};

// Requests with at most this many query rows (decode, speculative decode) may
// have their KV split into chunks; longer ones get their parallelism from
// their query rows, and splitting them would multiply the partial rows.
constexpr std::int32_t max_split_query_len = 8;
// A chunk shorter than this costs more in merging than it gains.
constexpr std::int64_t min_chunk_tokens = 256;

constexpr std::size_t align_up(std::size_t n) noexcept { return (n + 255) & ~std::size_t{255}; }

template <class T>
void grow(std::vector<T>& v, std::size_t n) {
  if (v.size() < n) v.resize(n);
}

// Pages that hold `len` tokens.
constexpr std::int64_t page_count(std::int64_t len, std::int32_t page_size) noexcept {
  return (len + page_size - 1) / page_size;
}

// What pass 1 learns about the requests. The flags are ints so that the loop
// folds them with `|`, without a branch.
struct request_scan {
  std::int64_t local = 0;               // KV tokens of this rank's shards
  std::int64_t splittable = 0;          // those of requests of at most max_split_query_len rows
  std::int64_t longest_splittable = 0;  // the longest such shard
  std::int64_t appended = 0;            // query tokens this rank owns (DCP only)
  std::int32_t min_q = std::numeric_limits<std::int32_t>::max();
  std::int32_t max_q = 0;
  int bad_batch = 0;  // a query offset decreases or a query exceeds its seq_len
  int bad_pages = 0;  // a request's page count differs from its shard's need
};

// The loop runs for every request of every step, so it is specialised on
// what would otherwise be branches or divisions per request: without DCP the
// shard is the sequence, and a power-of-two page size divides by shifting.
// Every check folds into a flag (the error paths find the first offender
// afterwards), the reductions are branch-free, and the request table is
// written in the same pass while the request's lines are in L1.
template <bool whole, bool pow2>
request_scan scan_requests_as(const std::int32_t* __restrict seq, const std::int32_t* __restrict loc,
                              const std::int32_t* __restrict ip, std::int32_t reqs, const dcp_layout& dcp,
                              std::int32_t ps, gpu::kernels::attention_request* __restrict rq) noexcept {
  const int shift = std::countr_zero(static_cast<std::uint32_t>(ps));
  const std::int32_t mask = ps - 1;
  // 32-bit lanes throughout (SSE2 has no 64-bit compares): lengths are
  // summed as unsigned, exact whenever the batch is valid (a negative length
  // is reported before the sums are used).
  std::uint64_t local = 0;
  std::uint64_t splittable = 0;
  std::int32_t longest = 0;
  std::int64_t appended = 0;
  std::int32_t min_q = std::numeric_limits<std::int32_t>::max();
  std::int32_t max_q = 0;
  int bad_batch = 0;
  int bad_pages = 0;
  for (std::int32_t i = 0; i < reqs; ++i) {
    const std::int32_t q0 = loc[i];
    const std::int32_t q1 = loc[i + 1];
    // Wrapping differences: their values only matter when the offsets do
    // not decrease, where they are exact.
    const auto ql = static_cast<std::int32_t>(static_cast<std::uint32_t>(q1) - static_cast<std::uint32_t>(q0));
    const std::int32_t s_len = seq[i];
    bad_batch |= static_cast<int>(q1 < q0) | static_cast<int>(s_len < ql);
    min_q = ql < min_q ? ql : min_q;
    max_q = ql > max_q ? ql : max_q;
    std::int32_t len = s_len;
    if constexpr (!whole) {
      len = static_cast<std::int32_t>(dcp.local_length(s_len));
      appended += len - dcp.local_length(static_cast<std::int64_t>(s_len) - ql);
    }
    std::int32_t need;
    if constexpr (pow2) {
      need = (len >> shift) + static_cast<std::int32_t>((len & mask) != 0);
    } else {
      need = len / ps + static_cast<std::int32_t>(len % ps != 0);
    }
    const std::uint32_t have = static_cast<std::uint32_t>(ip[i + 1]) - static_cast<std::uint32_t>(ip[i]);
    bad_pages |= static_cast<int>(ip[i + 1] < ip[i]) | static_cast<int>(have != static_cast<std::uint32_t>(need));
    local += static_cast<std::uint32_t>(len);
    // A mask, not a select: a select feeding a 64-bit sum defeats GCC's
    // vectoriser.
    const std::int32_t split_len = len & -static_cast<std::int32_t>(ql <= max_split_query_len);
    splittable += static_cast<std::uint32_t>(split_len);
    longest = split_len > longest ? split_len : longest;
  }
  // The table in a loop of its own: its five-field stores would keep the
  // checks above from being vectorised.
  for (std::int32_t i = 0; i < reqs; ++i) {
    const std::int32_t s_len = seq[i];
    std::int32_t len = s_len;
    if constexpr (!whole) len = static_cast<std::int32_t>(dcp.local_length(s_len));
    rq[i] = {loc[i], static_cast<std::int32_t>(static_cast<std::uint32_t>(loc[i + 1]) - static_cast<std::uint32_t>(loc[i])),
             s_len, ip[i], len};
  }
  return {static_cast<std::int64_t>(local), static_cast<std::int64_t>(splittable), longest, appended, min_q, max_q,
          bad_batch, bad_pages};
}

request_scan scan_requests(const std::int32_t* seq, const std::int32_t* loc, const std::int32_t* ip,
                           std::int32_t reqs, const dcp_layout& dcp, std::int32_t ps,
                           gpu::kernels::attention_request* rq) noexcept {
  const bool whole = dcp.world == 1;
  const bool pow2 = (ps & (ps - 1)) == 0;
  if (whole) {
    return pow2 ? scan_requests_as<true, true>(seq, loc, ip, reqs, dcp, ps, rq)
                : scan_requests_as<true, false>(seq, loc, ip, reqs, dcp, ps, rq);
  }
  return pow2 ? scan_requests_as<false, true>(seq, loc, ip, reqs, dcp, ps, rq)
              : scan_requests_as<false, false>(seq, loc, ip, reqs, dcp, ps, rq);
}

}  // namespace

struct attention_planner {
  static fault run(const kv_cache_config& cache, const attention_config& config, const attention_batch& in,
                   attention_plan& out, std::string* detail) {
    out.id_ = 0;
    if (const fault f = detail::check_attention_config(cache, config, detail)) return f;
    // The batch's O(1) checks here; its per-request checks are fused into the
    // pass below, and on any failure check_batch runs to report the first
    // offending value exactly as validate_batch does.
    const batch_view& bv = in.batch;
    const std::size_t nreq = bv.seq_lens.size();
    if (nreq == 0 || nreq > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max() - 1) ||
        bv.query_start_loc.size() != nreq + 1 || bv.num_tokens <= 0 || bv.query_start_loc[0] != 0 ||
        bv.query_start_loc[nreq] != bv.num_tokens) {
      batch_shape ignored;
      if (const fault f = detail::check_batch(bv, ignored, detail)) return f;
    }
    const std::int32_t reqs = static_cast<std::int32_t>(nreq);
    const auto indptr = in.pages.indptr();
    const auto indices = in.pages.indices();
    if (indptr.size() != static_cast<std::size_t>(reqs) + 1) {
      return fail(detail, errc::length_mismatch, "plan_attention: page table indptr has ", indptr.size(),
                  " entries; the batch has ", reqs, " requests so it needs ", reqs + 1);
    }
    if (indptr[0] != 0) {
      return fail(detail, errc::length_mismatch, "plan_attention: page table indptr[0]=", indptr[0], " must be 0");
    }
    const dcp_layout dcp = config.dcp;
    const std::int32_t ps = cache.page_size;
    const std::int32_t* seq = bv.seq_lens.data();
    const std::int32_t* loc = bv.query_start_loc.data();
    const std::int32_t* ip = indptr.data();

    // Pass 1, one per request: batch checks, shard lengths, page counts, the
    // request table, and the KV that may be split (see scan_requests).
    grow(out.requests_, static_cast<std::size_t>(reqs));
    gpu::kernels::attention_request* rq = out.requests_.data();
    const request_scan scan = scan_requests(seq, loc, ip, reqs, dcp, ps, rq);
    if (scan.bad_batch != 0) {
      batch_shape ignored;
      if (const fault f = detail::check_batch(bv, ignored, detail)) return f;
    }
    if (scan.bad_pages != 0) {
      // Only on failure: the first request whose page count is off.
      std::int32_t i = 0;
      while (i + 1 < reqs && std::int64_t{ip[i + 1]} - ip[i] == page_count(dcp.local_length(seq[i]), ps)) ++i;
      if (ip[i + 1] < ip[i]) {
        return fail(detail, errc::length_mismatch, "plan_attention: page table indptr[", i + 1, "]=", ip[i + 1],
                    " is less than indptr[", i, "]=", ip[i]);
      }
      const std::int64_t len = dcp.local_length(seq[i]);
      return fail(detail, errc::length_mismatch, "plan_attention: request ", i, " has ", std::int64_t{ip[i + 1]} - ip[i],
                  " pages; its shard of seq_len=", seq[i], " holds ", len, " tokens on dcp rank ", dcp.rank,
                  ", which need ", page_count(len, ps), " pages of ", ps);
    }
    const std::int64_t total_local = scan.local;
    const std::int64_t splittable = scan.splittable;
    const std::int64_t longest_splittable = scan.longest_splittable;
    const std::int32_t appended = dcp.world == 1 ? bv.num_tokens : static_cast<std::int32_t>(scan.appended);
    const std::int32_t min_q = scan.min_q;
    const std::int32_t max_q = scan.max_q;
    const batch_shape shape{reqs, bv.num_tokens, min_q, max_q};
    const std::int32_t used = ip[reqs];
    if (static_cast<std::size_t>(used) > indices.size()) {
      return fail(detail, errc::length_mismatch, "plan_attention: page table indptr[", reqs, "]=", used,
                  " runs past its ", indices.size(), " indices");
    }
    if (in.pages.checked_num_pages() != cache.num_pages) {
      // The largest index as unsigned (a negative one is huge): a branch-free
      // reduction the compiler vectorises; the first offender is looked for
      // only when there is one.
      const std::int32_t* idx = indices.data();
      std::uint32_t top = 0;
      for (std::int32_t k = 0; k < used; ++k) {
        const auto x = static_cast<std::uint32_t>(idx[k]);
        top = x > top ? x : top;
      }
      if (used > 0 && top >= static_cast<std::uint32_t>(cache.num_pages)) {
        std::int32_t bad = 0;
        while (static_cast<std::uint32_t>(idx[bad]) < static_cast<std::uint32_t>(cache.num_pages)) ++bad;
        std::int32_t r = 0;
        while (ip[r + 1] <= bad) ++r;
        return fail(detail, errc::invalid_argument, "plan_attention: request ", r, "'s page ", bad - ip[r], " is ",
                    idx[bad], ", outside [0, num_pages=", cache.num_pages, ")");
      }
    }

    // Chunk size: a whole number of pages.
    std::int64_t chunk;
    if (config.kv_chunk_pages > 0) {
      chunk = static_cast<std::int64_t>(config.kv_chunk_pages) * ps;
    } else if (config.target_work_items > 0 && splittable > 0) {
      const std::int64_t per = (splittable + config.target_work_items - 1) / config.target_work_items;
      chunk = std::max<std::int64_t>(per, min_chunk_tokens);
      chunk = (chunk + ps - 1) / ps * ps;
    } else {
      chunk = std::numeric_limits<std::int32_t>::max() / ps * ps;
    }
    chunk = std::min<std::int64_t>(chunk, std::numeric_limits<std::int32_t>::max() / ps * ps);

    // Pass 2: work items and chunk merges, from the request table.
    // An upper bound on work items: one per request plus the extra chunks.
    std::size_t work_bound = static_cast<std::size_t>(reqs) +
                             static_cast<std::size_t>(splittable / chunk) + static_cast<std::size_t>(reqs);
    if (longest_splittable > chunk) grow(out.work_, work_bound);
    grow(out.chunk_items_, static_cast<std::size_t>(reqs));
    gpu::kernels::attention_work_item* wk = out.work_.data();
    gpu::kernels::chunk_merge_item* ci = out.chunk_items_.data();
    std::size_t nw = 0;
    std::size_t nc = 0;
    std::int64_t partial_rows = 0;
    const bool identity = longest_splittable <= chunk;
    for (std::int32_t i = 0; i < (identity ? 0 : reqs); ++i) {
      const std::int32_t q0 = rq[i].q_begin;
      const std::int32_t ql = rq[i].q_len;
      const std::int64_t len = rq[i].kv_len;
      if (ql == 0) continue;
      const std::int64_t n = (ql <= max_split_query_len && len > chunk) ? (len + chunk - 1) / chunk : 1;
      if (n == 1) {
        wk[nw++] = {i, 0, static_cast<std::int32_t>(len), -1};
        continue;
      }
      if (nw + static_cast<std::size_t>(n) > out.work_.size()) {
        out.work_.resize(nw + static_cast<std::size_t>(n) + static_cast<std::size_t>(reqs - i));
        wk = out.work_.data();
      }
      const std::int64_t first = partial_rows;
      for (std::int64_t c = 0; c < n; ++c) {
        const std::int64_t b0 = c * chunk;
        const std::int64_t e = std::min(len, b0 + chunk);
        wk[nw++] = {i, static_cast<std::int32_t>(b0), static_cast<std::int32_t>(e),
                    static_cast<std::int32_t>(first + c * ql)};
      }
      partial_rows += n * ql;
      if (partial_rows > std::numeric_limits<std::int32_t>::max()) {
        return fail(detail, errc::overflow, "plan_attention: ", partial_rows,
                    " partial rows exceed int32 row numbers");
      }
      ci[nc++] = {q0, ql, static_cast<std::int32_t>(first), static_cast<std::int32_t>(n)};
    }

    // Sizes.
    const std::size_t t = static_cast<std::size_t>(shape.num_tokens);
    const std::size_t h = static_cast<std::size_t>(config.num_qo_heads);
    const std::size_t d = static_cast<std::size_t>(cache.head_dim);
    const std::size_t w = static_cast<std::size_t>(dcp.world);
    const bool rs = dcp.world > 1 && config.merge == dcp_merge::lse_all_gather_reduce_scatter;
    const std::size_t hw = rs ? h / w : h;
    attention_workspace_layout lay;
    std::size_t at = 0;
    auto take = [&at](std::size_t bytes) {
      const std::size_t here = at;
      at += align_up(bytes);
      return here;
    };
    lay.requests = take(static_cast<std::size_t>(reqs) * sizeof(gpu::kernels::attention_request));
    lay.work = take(nw * sizeof(gpu::kernels::attention_work_item));
    lay.chunk_items = take(nc * sizeof(gpu::kernels::chunk_merge_item));
    lay.indices = take(static_cast<std::size_t>(used) * sizeof(std::int32_t));
    lay.partial_out = take(static_cast<std::size_t>(partial_rows) * h * d * sizeof(float));
    lay.partial_lse = take(static_cast<std::size_t>(partial_rows) * h * sizeof(float));
    if (dcp.world > 1) {
      lay.local_out = take(t * h * d * sizeof(float));
      lay.local_lse = take(t * h * sizeof(float));
      if (!rs) {
        lay.gather_out = take(w * t * h * d * sizeof(float));
        lay.gather_lse = take(w * t * h * sizeof(float));
      } else {
        lay.gather_lse = take(w * t * h * sizeof(float));
        lay.scatter_out = take(w * t * hw * d * sizeof(float));
        lay.reduced_out = take(t * hw * d * sizeof(float));
      }
    }
    lay.total = at;

    std::int64_t dcp_bytes = 0;
    if (dcp.world > 1) {
      const auto th = static_cast<std::int64_t>(t * h);
      const auto wi = static_cast<std::int64_t>(w);
      if (!rs) {
        dcp_bytes = (1 + wi) * th * (static_cast<std::int64_t>(d) + 1) * 4;
      } else {
        dcp_bytes = (1 + wi) * th * 4 + (wi + 1) * static_cast<std::int64_t>(t * hw * d) * 4;
      }
    }

    out.cache_ = cache;
    out.config_ = config;
    out.shape_ = shape;
    out.output_heads_ = static_cast<std::int32_t>(hw);
    out.local_kv_tokens_ = total_local;
    out.chunk_tokens_ = static_cast<std::int32_t>(chunk);
    out.dcp_bytes_ = dcp_bytes;
    out.appended_tokens_ = appended;
    out.partial_rows_ = static_cast<std::int32_t>(partial_rows);
    out.layout_ = lay;
    out.num_work_ = nw;
    out.identity_work_ = identity;
    out.num_chunk_items_ = nc;
    out.indices_ = indices.first(static_cast<std::size_t>(used));
    out.id_ = next_plan_id.fetch_add(1, std::memory_order_relaxed);
    return {};
  }
};

void attention_plan::reserve(std::int32_t max_reqs, std::int32_t max_tokens, std::int32_t max_work_items) {
  grow(requests_, static_cast<std::size_t>(std::max(max_reqs, 0)));
  grow(chunk_items_, static_cast<std::size_t>(std::max(max_reqs, 0)));
  (void)max_tokens;  // nothing is kept per token
  grow(work_, static_cast<std::size_t>(std::max(max_work_items, 0)));
}

std::size_t attention_plan::output_elements() const noexcept {
  return static_cast<std::size_t>(shape_.num_tokens) * static_cast<std::size_t>(output_heads_) *
         static_cast<std::size_t>(cache_.head_dim);
}

std::size_t attention_plan::lse_elements() const noexcept {
  return static_cast<std::size_t>(shape_.num_tokens) * static_cast<std::size_t>(output_heads_);
}

void plan_attention(const kv_cache_config& cache, const attention_config& config, const attention_batch& batch,
                    attention_plan& out) {
  std::string text;
  if (const fault f = attention_planner::run(cache, config, batch, out, &text)) throw_engine_error(f.code, text);
}

void plan_attention(const kv_cache_config& cache, const attention_config& config, const attention_batch& batch,
                    attention_plan& out, std::error_code& ec) noexcept {
  ec.clear();
  if (const fault f = attention_planner::run(cache, config, batch, out, nullptr)) ec = make_error_code(f.code);
}

void validate_attention_config(const kv_cache_config& cache, const attention_config& config) {
  std::string text;
  if (const fault f = detail::check_attention_config(cache, config, &text)) throw_engine_error(f.code, text);
}

}  // namespace cobatch::engine
