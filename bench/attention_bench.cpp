// Batch attention on the host: the cost of planning a step (pure CPU, every
// step, so it must stay far below a decode step) and the host LSE merge's
// memory throughput against memcpy's on the same bytes in the same run.
#include <cobatch/coro/completion_reactor.hpp>
#include <cobatch/coro/run_loop.hpp>
#include <cobatch/engine/attention/attention_plan.hpp>
#include <cobatch/engine/attention/lse.hpp>
#include <cobatch/engine/attention/page_table.hpp>
#include <cobatch/gpu/device_memory.hpp>
#include <cobatch/gpu/host/host_device.hpp>
#include <cobatch/gpu/kernels/attention_kernels.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

namespace {

using namespace cobatch;
using namespace cobatch::engine;

// 4096 requests, fixed seed, page size 16, contexts uniform in [1, 32768]:
// 15 in 16 decode (1 query token; every fourth of them speculative, 1 + 3),
// the rest prefill chunks of 16 to 64 tokens against their cached prefix.
// About 12k tokens and 4.2M KV tokens (262k pages), all on one rank.
struct plan_batch {
  kv_cache_config cache;
  attention_config config;
  std::vector<std::int32_t> qsl{0};
  std::vector<std::int32_t> seq;
  page_table table{1};

  plan_batch() {
    std::mt19937 rng(32768u);
    std::uniform_int_distribution<int> kind(0, 15), chunk(16, 64), context(1, 32768);
    std::int64_t pages = 0;
    std::vector<std::int32_t> lens;
    for (int i = 0; i < 4096; ++i) {
      const int k = kind(rng);
      const std::int32_t q = k == 0 ? chunk(rng) : (k % 4 == 1 ? 4 : 1);
      const std::int32_t s = std::max(q, context(rng));
      qsl.push_back(qsl.back() + q);
      seq.push_back(s);
      pages += (s + 15) / 16;
    }
    cache = {1, static_cast<std::int32_t>(pages), 16, 8, 128, gpu::data_type::bf16};
    config.num_qo_heads = 32;
    config.softmax_scale = 0.088388f;
    table = page_table(cache.num_pages);
    table.reserve(4096, static_cast<std::size_t>(pages));
    std::vector<std::int32_t> mine;
    std::int32_t next = 0;
    for (std::int32_t s : seq) {
      mine.clear();
      for (std::int32_t p = 0; p < (s + 15) / 16; ++p) mine.push_back(next++);
      table.add_request(mine);
    }
  }
  attention_batch view() const { return {{qsl, seq, qsl.back()}, table.view()}; }
};

const plan_batch& batch() {
  static const plan_batch b;
  return b;
}

// A warm plan (its storage grown by the first call): what an engine pays per
// step. The page table comes from page_table, whose indices were checked when
// the pages were handed out.
void BM_attn_plan_4096(benchmark::State& state) {
  const plan_batch& b = batch();
  const attention_batch view = b.view();
  attention_plan plan;
  plan_attention(b.cache, b.config, view, plan);
  for (auto _ : state) {
    plan_attention(b.cache, b.config, view, plan);
    benchmark::DoNotOptimize(plan.id());
  }
  state.counters["requests"] = plan.num_reqs();
  state.counters["tokens"] = plan.num_tokens();
  state.counters["work_items"] = plan.num_work_items();
  state.counters["kv_tokens"] = static_cast<double>(plan.local_kv_tokens());
}
BENCHMARK(BM_attn_plan_4096)->Unit(benchmark::kNanosecond);

// The same batch with a borrowed page table: every page index is checked.
void BM_attn_plan_4096_raw_table(benchmark::State& state) {
  const plan_batch& b = batch();
  const auto v = b.table.view();
  const attention_batch view{{b.qsl, b.seq, b.qsl.back()}, page_table_view(v.indptr(), v.indices())};
  attention_plan plan;
  plan_attention(b.cache, b.config, view, plan);
  for (auto _ : state) {
    plan_attention(b.cache, b.config, view, plan);
    benchmark::DoNotOptimize(plan.id());
  }
}
BENCHMARK(BM_attn_plan_4096_raw_table)->Unit(benchmark::kMicrosecond);

// 8 shards (DCP ranks), 4096 tokens x 32 heads rows, head dim 128, f32, and
// memcpy's source and destination of as many bytes: all of them device
// memory of a host device, allocated alike (zeroed, so every page is touched
// before any timing; 2 MiB-aligned in transparent huge pages, as the host
// backend gives any buffer of 16 MiB or more), so that neither side pays for
// page faults or smaller pages the other does not.
struct merge_data {
  static constexpr std::int32_t shards = 8;
  static constexpr std::int64_t rows = 4096 * 32;
  static constexpr std::int32_t d = 128;
  static constexpr std::size_t out_size = static_cast<std::size_t>(shards * rows * d);
  static constexpr std::size_t lse_size = static_cast<std::size_t>(shards * rows);
  static constexpr std::size_t merged_size = static_cast<std::size_t>(rows * d);
  static constexpr std::size_t merged_lse_size = static_cast<std::size_t>(rows);
  static constexpr std::size_t bytes_read = (out_size + lse_size) * sizeof(float);
  static constexpr std::size_t bytes_written = (merged_size + merged_lse_size) * sizeof(float);
  // memcpy moves as many bytes as the merge: half read, half written.
  static constexpr std::size_t copy_size = (bytes_read + bytes_written) / 2;

  coro::run_loop loop;
  coro::completion_reactor reactor{loop.get_executor()};
  gpu::host::host_device device{reactor, {"lse merge bench", 0, std::size_t{2} << 30}};
  gpu::typed_buffer<float> out{device, out_size}, lse{device, lse_size};
  gpu::typed_buffer<float> merged{device, merged_size}, merged_lse{device, merged_lse_size};
  gpu::typed_buffer<std::byte> copy_src{device, copy_size}, copy_dst{device, copy_size};

  merge_data() {
    std::mt19937 rng(8);
    std::uniform_real_distribution<float> val(-1.0f, 1.0f), l(-10.0f, 10.0f);
    for (auto& x : out.span().host_span()) x = val(rng);
    for (auto& x : lse.span().host_span()) x = l(rng);
    std::memset(copy_src.data(), 1, copy_size);
  }
};

merge_data& merge() {
  static merge_data m;
  return m;
}

void BM_lse_merge_host(benchmark::State& state) {
  merge_data& m = merge();
  gpu::kernels::lse_merge_args a;
  a.num_shards = merge_data::shards;
  a.rows = merge_data::rows;
  a.head_dim = merge_data::d;
  a.shard_out = m.out.data();
  a.shard_out_stride = merge_data::rows * merge_data::d;
  a.shard_lse = m.lse.data();
  a.shard_lse_stride = merge_data::rows;
  a.out = m.merged.data();
  a.out_lse = m.merged_lse.data();
  for (auto _ : state) {
    gpu::kernels::host::lse_merge(a);
    benchmark::ClobberMemory();
  }
  const double bytes = static_cast<double>(merge_data::bytes_read + merge_data::bytes_written);
  state.counters["gbps"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_lse_merge_host)->Unit(benchmark::kMillisecond)->UseRealTime();

// memcpy of as many bytes as the merge moves (half read, half written), one
// thread: the memory system's throughput the merge is compared with. Both
// count the bytes read plus the bytes written.
void BM_lse_merge_memcpy(benchmark::State& state) {
  merge_data& m = merge();
  for (auto _ : state) {
    std::memcpy(m.copy_dst.data(), m.copy_src.data(), merge_data::copy_size);
    benchmark::ClobberMemory();
  }
  state.counters["gbps"] = benchmark::Counter(2.0 * static_cast<double>(merge_data::copy_size) * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_lse_merge_memcpy)->Unit(benchmark::kMillisecond)->UseRealTime();

// Host decode attention: 64 requests of one query token each, page size 16,
// f32 pool; arguments head dim, query heads, KV heads, shortest and longest
// context (uniform, fixed seed). 64/8/2/64/512 and 128/8/2/64/512 are GQA 4:1;
// 64/2/1/16/80 is the example server's reference model. One thread, so CPU
// time is the kernel's cost.
struct decode_data {
  static constexpr std::int32_t requests = 64, page_size = 16;
  std::int32_t d, qo_heads, kv_heads;
  std::vector<float> q, pages, out, lse;
  std::vector<std::int32_t> indices;
  std::vector<gpu::kernels::attention_request> reqs;
  std::int64_t kv_tokens = 0;

  decode_data(std::int32_t head_dim, std::int32_t qo, std::int32_t kv, std::int32_t min_context,
              std::int32_t max_context)
      : d(head_dim), qo_heads(qo), kv_heads(kv) {
    std::mt19937 rng(512u + static_cast<unsigned>(head_dim));
    std::uniform_int_distribution<std::int32_t> context(min_context, max_context);
    std::uniform_real_distribution<float> val(-1.0f, 1.0f);
    std::int32_t num_pages = 0;
    for (std::int32_t r = 0; r < requests; ++r) {
      const std::int32_t s = context(rng);
      reqs.push_back({r, 1, s, static_cast<std::int32_t>(indices.size()), s});
      for (std::int32_t p = 0; p < (s + page_size - 1) / page_size; ++p) indices.push_back(num_pages++);
      kv_tokens += s;
    }
    // Pages handed out shuffled, as a pool that has served for a while has them.
    std::shuffle(indices.begin(), indices.end(), rng);
    pages.resize(static_cast<std::size_t>(num_pages) * 2 * page_size * kv_heads * d);
    q.resize(static_cast<std::size_t>(requests) * qo_heads * d);
    for (auto& x : pages) x = val(rng);
    for (auto& x : q) x = val(rng);
    out.resize(q.size());
    lse.resize(static_cast<std::size_t>(requests) * qo_heads);
  }

  gpu::kernels::paged_attention_args args() {
    gpu::kernels::paged_attention_args a;
    a.q = q.data();
    a.kv_pages = pages.data();
    a.num_pages = static_cast<std::int32_t>(indices.size());
    a.page_size = page_size;
    a.num_qo_heads = qo_heads;
    a.num_kv_heads = kv_heads;
    a.head_dim = d;
    a.sm_scale = 1.0f / std::sqrt(static_cast<float>(d));
    a.kv_indices = indices.data();
    a.requests = reqs.data();
    a.num_work = requests;
    a.num_tokens = requests;
    a.max_q_len = 1;
    a.out = out.data();
    a.out_lse = lse.data();
    return a;
  }
};

void BM_paged_attention_decode_host(benchmark::State& state) {
  auto arg = [&](int i) { return static_cast<std::int32_t>(state.range(i)); };
  decode_data data(arg(0), arg(1), arg(2), arg(3), arg(4));
  const gpu::kernels::paged_attention_args a = data.args();
  for (auto _ : state) {
    gpu::kernels::host::paged_attention(a);
    benchmark::ClobberMemory();
  }
  state.counters["kv_tokens"] = static_cast<double>(data.kv_tokens);
  state.counters["kv_gbps"] = benchmark::Counter(
      static_cast<double>(data.kv_tokens) * 2.0 * data.kv_heads * data.d * sizeof(float) * 1e-9,
      benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_paged_attention_decode_host)
    ->Args({64, 8, 2, 64, 512})
    ->Args({128, 8, 2, 64, 512})
    ->Args({64, 2, 1, 16, 80})
    ->Unit(benchmark::kMicrosecond);

}  // namespace
