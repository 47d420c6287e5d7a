// Test harness for batch attention on the host backend: seeded random ragged
// problems (prefill with cached prefixes, decode, speculative decode, mixed),
// a float64 reference (plain softmax), and DCP groups of in-process ranks that
// each hold their shard of the KV cache in randomly placed pages.
#pragma once

#include <cobatch/coro/run_loop.hpp>
#include <cobatch/engine/attention/batch_attention.hpp>
#include <cobatch/engine/attention/page_table.hpp>
#include <cobatch/engine/attention/paged_kv_cache.hpp>
#include <cobatch/gpu/communicator.hpp>
#include <cobatch/gpu/device_memory.hpp>
#include <cobatch/gpu/float16.hpp>
#include <cobatch/gpu/host/host_device.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <vector>

namespace cobatch::engine::test {

struct attention_env {
  coro::run_loop loop;
  coro::completion_reactor reactor{loop.get_executor()};
  gpu::host::host_device dev{reactor, gpu::host::device_options{"attention test device", 0, std::size_t{4} << 30}};
  attention_env() { loop.attach(reactor); }
  ~attention_env() { loop.detach(); }

  /// Waits until every stream has run what was enqueued; returns their errors.
  std::vector<std::error_code> wait(std::vector<gpu::stream_ref> streams) {
    std::vector<std::error_code> errors(streams.size());
    std::size_t done = 0;
    for (std::size_t i = 0; i < streams.size(); ++i) {
      streams[i].async_wait([&, i](std::error_code ec) {
        errors[i] = ec;
        if (++done == streams.size()) loop.stop();
      });
    }
    while (done < streams.size()) {
      loop.restart();
      loop.run();
    }
    return errors;
  }
};

/// A batch with its global data: every request's K/V for all its tokens.
struct problem {
  std::int32_t kv_heads = 1;
  std::int32_t group = 1;
  std::int32_t head_dim = 64;
  std::int32_t page_size = 16;
  float scale = 0.125f;
  gpu::data_type storage = gpu::data_type::f32;
  std::vector<std::int32_t> q_lens;
  std::vector<std::int32_t> seq_lens;
  std::vector<std::int32_t> qsl;  // query_start_loc
  std::vector<float> q;           // [T][H][D]
  std::vector<std::vector<float>> k, v;  // per request: [seq][kv_heads][D]

  std::int32_t heads() const { return kv_heads * group; }
  std::int32_t tokens() const { return qsl.back(); }
  std::int32_t reqs() const { return static_cast<std::int32_t>(q_lens.size()); }
  batch_view batch() const { return {qsl, seq_lens, tokens()}; }
  std::size_t row() const { return static_cast<std::size_t>(kv_heads) * static_cast<std::size_t>(head_dim); }

  /// Rounds every input to the storage type, so that the reference sees what
  /// the kernels see.
  void round_to_storage() {
    if (storage != gpu::data_type::bf16) return;
    auto r = [](std::vector<float>& xs) {
      for (float& x : xs) x = gpu::bf16::from_float(x).to_float();
    };
    r(q);
    for (auto& x : k) r(x);
    for (auto& x : v) r(x);
  }
};

struct problem_options {
  std::int32_t max_reqs = 6;
  std::int32_t max_prefix = 80;
  std::int32_t max_prefill = 12;
  std::vector<std::int32_t> kv_heads = {1, 2, 3};
  std::vector<std::int32_t> groups = {1, 2, 4};
  std::vector<std::int32_t> head_dims = {64, 128};
  std::vector<std::int32_t> page_sizes = {1, 4, 16};
  std::int32_t heads_multiple_of = 1;  ///< for the reduce-scatter merge
};

inline problem random_problem(std::mt19937& rng, const problem_options& o = {}) {
  auto pick = [&](const std::vector<std::int32_t>& xs) {
    return xs[std::uniform_int_distribution<std::size_t>(0, xs.size() - 1)(rng)];
  };
  problem p;
  do {
    p.kv_heads = pick(o.kv_heads);
    p.group = pick(o.groups);
  } while (p.heads() % o.heads_multiple_of != 0);
  p.head_dim = pick(o.head_dims);
  p.page_size = pick(o.page_sizes);
  p.scale = 1.0f / std::sqrt(static_cast<float>(p.head_dim));
  const std::int32_t n = std::uniform_int_distribution<std::int32_t>(1, o.max_reqs)(rng);
  p.qsl.push_back(0);
  std::uniform_real_distribution<float> val(-1.0f, 1.0f);
  for (std::int32_t i = 0; i < n; ++i) {
    const int kind = std::uniform_int_distribution<int>(0, 4)(rng);
    std::int32_t ql;
    std::int32_t prefix;
    switch (kind) {
      case 0: ql = 1; prefix = std::uniform_int_distribution<std::int32_t>(0, o.max_prefix)(rng); break;  // decode
      case 1: ql = std::uniform_int_distribution<std::int32_t>(2, 4)(rng);                                  // spec decode
              prefix = std::uniform_int_distribution<std::int32_t>(1, o.max_prefix)(rng); break;
      case 2: ql = std::uniform_int_distribution<std::int32_t>(1, o.max_prefill)(rng); prefix = 0; break;  // fresh prefill
      case 3: ql = std::uniform_int_distribution<std::int32_t>(1, o.max_prefill)(rng);                      // cached prefix
              prefix = std::uniform_int_distribution<std::int32_t>(1, o.max_prefix)(rng); break;
      default: ql = 1; prefix = std::uniform_int_distribution<std::int32_t>(0, 3)(rng); break;  // short: empty shards
    }
    p.q_lens.push_back(ql);
    p.seq_lens.push_back(prefix + ql);
    p.qsl.push_back(p.qsl.back() + ql);
  }
  p.q.resize(static_cast<std::size_t>(p.tokens()) * p.heads() * p.head_dim);
  for (float& x : p.q) x = val(rng);
  for (std::int32_t i = 0; i < n; ++i) {
    const std::size_t len = static_cast<std::size_t>(p.seq_lens[static_cast<std::size_t>(i)]) * p.row();
    p.k.emplace_back(len);
    p.v.emplace_back(len);
    for (float& x : p.k.back()) x = val(rng);
    for (float& x : p.v.back()) x = val(rng);
  }
  return p;
}

/// Plain-softmax attention in float64: out [T][H][D], lse [T][H] natural.
struct reference_result {
  std::vector<double> out;
  std::vector<double> lse;
};

inline reference_result reference(const problem& p) {
  const std::size_t h = static_cast<std::size_t>(p.heads());
  const std::size_t d = static_cast<std::size_t>(p.head_dim);
  reference_result r;
  r.out.assign(static_cast<std::size_t>(p.tokens()) * h * d, 0.0);
  r.lse.assign(static_cast<std::size_t>(p.tokens()) * h, -std::numeric_limits<double>::infinity());
  for (std::int32_t i = 0; i < p.reqs(); ++i) {
    const auto& k = p.k[static_cast<std::size_t>(i)];
    const auto& v = p.v[static_cast<std::size_t>(i)];
    const std::int32_t ql = p.q_lens[static_cast<std::size_t>(i)];
    const std::int32_t seq = p.seq_lens[static_cast<std::size_t>(i)];
    for (std::int32_t j = 0; j < ql; ++j) {
      const std::int32_t pos = seq - ql + j;
      const std::size_t row = static_cast<std::size_t>(p.qsl[static_cast<std::size_t>(i)] + j);
      for (std::size_t head = 0; head < h; ++head) {
        const std::size_t kvh = head / static_cast<std::size_t>(p.group);
        std::vector<double> s(static_cast<std::size_t>(pos) + 1);
        double m = -std::numeric_limits<double>::infinity();
        for (std::int32_t t = 0; t <= pos; ++t) {
          double dot = 0;
          for (std::size_t e = 0; e < d; ++e) {
            dot += static_cast<double>(p.q[(row * h + head) * d + e]) *
                   static_cast<double>(k[static_cast<std::size_t>(t) * p.row() + kvh * d + e]);
          }
          s[static_cast<std::size_t>(t)] = dot * static_cast<double>(p.scale);
          m = std::max(m, s[static_cast<std::size_t>(t)]);
        }
        double sum = 0;
        for (double& x : s) sum += (x = std::exp(x - m));
        for (std::int32_t t = 0; t <= pos; ++t) {
          for (std::size_t e = 0; e < d; ++e) {
            r.out[(row * h + head) * d + e] +=
                s[static_cast<std::size_t>(t)] / sum * static_cast<double>(v[static_cast<std::size_t>(t) * p.row() + kvh * d + e]);
          }
        }
        r.lse[row * h + head] = m + std::log(sum);
      }
    }
  }
  return r;
}

/// One rank of a DCP group: its cache with its shard of every request's K/V
/// (the prefix in place; this step's tokens appended by the run), in pages
/// placed at random.
struct rank_state {
  std::unique_ptr<paged_kv_cache> cache;
  page_table table{1};
  std::vector<std::vector<std::int32_t>> pages;  // per request
  gpu::device_buffer q, new_k, new_v, out, lse;
  gpu::stream compute, comm;
  std::unique_ptr<batch_attention> attn;
  attention_plan plan;
};

template <class T>
void store(gpu::device_buffer& b, std::size_t i, float x) {
  if constexpr (std::is_same_v<T, float>) {
    b.as<float>().data()[i] = x;
  } else {
    b.as<gpu::bf16>().data()[i] = gpu::bf16::from_float(x);
  }
}

inline float load(const gpu::device_buffer& b, gpu::data_type t, std::size_t i) {
  return t == gpu::data_type::f32 ? b.as<float>().data()[i] : b.as<gpu::bf16>().data()[i].to_float();
}

inline void put(gpu::device_buffer& b, gpu::data_type t, std::size_t i, float x) {
  if (t == gpu::data_type::f32) {
    store<float>(b, i, x);
  } else {
    store<gpu::bf16>(b, i, x);
  }
}

inline gpu::any_device_span typed(const gpu::device_buffer& b, gpu::data_type t) {
  if (t == gpu::data_type::f32) return b.as<float>();
  return b.as<gpu::bf16>();
}

struct group_options {
  std::int32_t world = 1;
  std::int32_t interleave = 1;
  dcp_merge merge = dcp_merge::all_gather;
  std::int32_t num_layers = 1;
  std::int32_t kv_chunk_pages = 0;
  lse_base base = lse_base::e;
  bool append_new = true;  ///< the step's tokens through new_k/new_v (else written in place)
  bool fill_prefix = true;  ///< write the cached prefix into the cache (else it arrives by hand-off)
};

/// A DCP group that runs problem `p` and returns every rank's output laid
/// out as [T][H][D] (head slices put back together for the reduce-scatter
/// merge) and the LSE in natural base.
struct group_run {
  std::vector<float> out;
  std::vector<float> lse;
  std::vector<std::error_code> errors;
  attention_stats stats0;
};

inline void fill_rank_cache(const problem& p, rank_state& rs, const dcp_layout& dcp, std::int32_t layer,
                            bool prefix_only) {
  const auto& cc = rs.cache->config();
  auto bytes = rs.cache->layer(layer).host_span();
  const std::size_t row = p.row();
  const std::size_t half = static_cast<std::size_t>(cc.page_size) * row;
  const std::size_t elem = gpu::size_of(cc.storage);
  for (std::int32_t i = 0; i < p.reqs(); ++i) {
    const std::int32_t seq = p.seq_lens[static_cast<std::size_t>(i)];
    const std::int32_t upto = prefix_only ? seq - p.q_lens[static_cast<std::size_t>(i)] : seq;
    for (std::int32_t t = 0; t < upto; ++t) {
      if (dcp.owner(t) != dcp.rank) continue;
      const std::int64_t l = dcp.local_position(t);
      const std::size_t page = static_cast<std::size_t>(rs.pages[static_cast<std::size_t>(i)][static_cast<std::size_t>(l / cc.page_size)]);
      const std::size_t base = page * 2 * half + static_cast<std::size_t>(l % cc.page_size) * row;
      for (std::size_t e = 0; e < row; ++e) {
        const float kx = p.k[static_cast<std::size_t>(i)][static_cast<std::size_t>(t) * row + e];
        const float vx = p.v[static_cast<std::size_t>(i)][static_cast<std::size_t>(t) * row + e];
        if (elem == 4) {
          reinterpret_cast<float*>(bytes.data())[base + e] = kx;
          reinterpret_cast<float*>(bytes.data())[base + half + e] = vx;
        } else {
          reinterpret_cast<gpu::bf16*>(bytes.data())[base + e] = gpu::bf16::from_float(kx);
          reinterpret_cast<gpu::bf16*>(bytes.data())[base + half + e] = gpu::bf16::from_float(vx);
        }
      }
    }
  }
}

/// Sets up rank `r` of a group: cache, random pages, table, buffers.
inline void setup_rank(attention_env& env, const problem& p, const group_options& g, std::int32_t r,
                       rank_state& rs, std::mt19937& rng, const gpu::communicator* comm) {
  dcp_layout dcp{g.world, r, g.interleave};
  std::int32_t need = 0;
  for (std::int32_t i = 0; i < p.reqs(); ++i) {
    need += page_pool::pages_for(dcp.local_length(p.seq_lens[static_cast<std::size_t>(i)]), p.page_size);
  }
  kv_cache_config cc;
  cc.num_layers = g.num_layers;
  cc.num_pages = need + 3;
  cc.page_size = p.page_size;
  cc.num_kv_heads = p.kv_heads;
  cc.head_dim = p.head_dim;
  cc.storage = p.storage;
  rs.cache = std::make_unique<paged_kv_cache>(env.dev, cc);
  // Pages in a random order: take all, shuffle, give back.
  page_pool pool(cc.num_pages);
  std::vector<std::int32_t> all;
  pool.allocate(cc.num_pages, all);
  std::shuffle(all.begin(), all.end(), rng);
  pool.release(all);
  rs.table = page_table(cc.num_pages);
  rs.pages.clear();
  for (std::int32_t i = 0; i < p.reqs(); ++i) {
    std::vector<std::int32_t> mine;
    pool.allocate(page_pool::pages_for(dcp.local_length(p.seq_lens[static_cast<std::size_t>(i)]), p.page_size), mine);
    rs.table.add_request(mine);
    rs.pages.push_back(std::move(mine));
  }
  if (g.fill_prefix) {
    for (std::int32_t l = 0; l < g.num_layers; ++l) fill_rank_cache(p, rs, dcp, l, g.append_new);
  }
  attention_config ac;
  ac.num_qo_heads = p.heads();
  ac.softmax_scale = p.scale;
  ac.dcp = dcp;
  ac.merge = g.merge;
  ac.kv_chunk_pages = g.kv_chunk_pages;
  rs.attn = std::make_unique<batch_attention>(env.dev, *rs.cache, ac, comm);
  rs.compute = env.dev.make_stream();
  rs.comm = env.dev.make_stream(gpu::stream_options{gpu::stream_priority::high});
  const std::size_t elem = gpu::size_of(p.storage);
  const std::size_t t = static_cast<std::size_t>(p.tokens());
  const std::size_t h = static_cast<std::size_t>(p.heads());
  const std::size_t d = static_cast<std::size_t>(p.head_dim);
  rs.q = gpu::allocate(env.dev, t * h * d * elem);
  for (std::size_t i = 0; i < p.q.size(); ++i) put(rs.q, p.storage, i, p.q[i]);
  rs.new_k = gpu::allocate(env.dev, t * p.row() * elem);
  rs.new_v = gpu::allocate(env.dev, t * p.row() * elem);
  for (std::int32_t i = 0; i < p.reqs(); ++i) {
    const std::int32_t ql = p.q_lens[static_cast<std::size_t>(i)];
    const std::int32_t seq = p.seq_lens[static_cast<std::size_t>(i)];
    for (std::int32_t j = 0; j < ql; ++j) {
      const std::size_t row = static_cast<std::size_t>(p.qsl[static_cast<std::size_t>(i)] + j);
      const std::size_t tok = static_cast<std::size_t>(seq - ql + j);
      for (std::size_t e = 0; e < p.row(); ++e) {
        put(rs.new_k, p.storage, row * p.row() + e, p.k[static_cast<std::size_t>(i)][tok * p.row() + e]);
        put(rs.new_v, p.storage, row * p.row() + e, p.v[static_cast<std::size_t>(i)][tok * p.row() + e]);
      }
    }
  }
  const std::size_t out_heads =
      (g.world > 1 && g.merge == dcp_merge::lse_all_gather_reduce_scatter) ? h / static_cast<std::size_t>(g.world) : h;
  rs.out = gpu::allocate(env.dev, t * out_heads * d * elem);
  rs.lse = gpu::allocate(env.dev, t * out_heads * sizeof(float));
}

inline attention_io io_of(const problem& p, const rank_state& rs, const group_options& g, std::int32_t layer) {
  attention_io io;
  io.layer = layer;
  io.q = typed(rs.q, p.storage);
  if (g.append_new) {
    io.new_k = typed(rs.new_k, p.storage);
    io.new_v = typed(rs.new_v, p.storage);
  }
  io.out = typed(rs.out, p.storage);
  io.lse = g.base == lse_base::e ? lse_ref::base_e(rs.lse.as<float>()) : lse_ref::base_2(rs.lse.as<float>());
  return io;
}

/// Every rank's output as [T][H][D] (head slices put back together for the
/// reduce-scatter merge) and the LSE in natural base.
inline void collect_outputs(const problem& p, const group_options& g, const std::vector<rank_state>& ranks,
                            group_run& result) {
  const std::size_t t = static_cast<std::size_t>(p.tokens());
  const std::size_t h = static_cast<std::size_t>(p.heads());
  const std::size_t d = static_cast<std::size_t>(p.head_dim);
  result.out.assign(t * h * d, 0.0f);
  result.lse.assign(t * h, 0.0f);
  const float to_natural = g.base == lse_base::two ? 0.6931471805599453f : 1.0f;
  const bool rs_merge = g.world > 1 && g.merge == dcp_merge::lse_all_gather_reduce_scatter;
  for (std::int32_t r = 0; r < g.world; ++r) {
    const auto& rs = ranks[static_cast<std::size_t>(r)];
    const std::size_t hw = rs_merge ? h / static_cast<std::size_t>(g.world) : h;
    const std::size_t h0 = rs_merge ? static_cast<std::size_t>(r) * hw : 0;
    if (!rs_merge && r != 0) {
      // Every rank holds the whole output: check they agree with rank 0.
      for (std::size_t i = 0; i < t * h * d; ++i) {
        if (load(rs.out, p.storage, i) != result.out[i]) {
          FAIL("rank " << r << " output element " << i << " differs from rank 0's");
        }
      }
      continue;
    }
    for (std::size_t tok = 0; tok < t; ++tok) {
      for (std::size_t hh = 0; hh < hw; ++hh) {
        for (std::size_t e = 0; e < d; ++e) {
          result.out[(tok * h + h0 + hh) * d + e] = load(rs.out, p.storage, (tok * hw + hh) * d + e);
        }
        result.lse[tok * h + h0 + hh] = rs.lse.as<float>().data()[tok * hw + hh] * to_natural;
      }
    }
  }
}

inline group_run run_group(attention_env& env, const problem& p, const group_options& g, std::uint32_t seed) {
  std::mt19937 rng(seed);
  auto comms = gpu::host::make_communicators(g.world);
  std::vector<rank_state> ranks(static_cast<std::size_t>(g.world));
  for (std::int32_t r = 0; r < g.world; ++r) {
    setup_rank(env, p, g, r, ranks[static_cast<std::size_t>(r)], rng, g.world > 1 ? &comms[static_cast<std::size_t>(r)] : nullptr);
  }
  std::vector<gpu::stream_ref> streams;
  for (std::int32_t layer = 0; layer < g.num_layers; ++layer) {
    for (std::int32_t r = 0; r < g.world; ++r) {
      auto& rs = ranks[static_cast<std::size_t>(r)];
      if (layer == 0) rs.attn->plan({p.batch(), rs.table.view()}, rs.plan);
      rs.attn->enqueue_run(rs.plan, io_of(p, rs, g, layer), rs.compute, rs.comm);
    }
  }
  for (auto& rs : ranks) {
    streams.push_back(rs.compute);
    streams.push_back(rs.comm);
  }
  group_run result;
  result.errors = env.wait(streams);
  collect_outputs(p, g, ranks, result);
  result.stats0 = ranks[0].attn->stats();
  return result;
}

/// Largest error of `got` against `want`, relative per (row, head) vector to
/// the vector's largest magnitude.
inline double max_rel_error(const std::vector<float>& got, const std::vector<double>& want, std::size_t d) {
  double worst = 0;
  for (std::size_t base = 0; base < want.size(); base += d) {
    double scale = 0;
    double err = 0;
    for (std::size_t e = 0; e < d; ++e) {
      scale = std::max(scale, std::abs(want[base + e]));
      err = std::max(err, std::abs(static_cast<double>(got[base + e]) - want[base + e]));
    }
    worst = std::max(worst, err / std::max(scale, 1e-6));
  }
  return worst;
}

inline double max_rel_error(const std::vector<float>& got, const std::vector<float>& want, std::size_t d) {
  return max_rel_error(got, std::vector<double>(want.begin(), want.end()), d);
}

inline double max_lse_error(const std::vector<float>& got, const std::vector<double>& want) {
  double worst = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    worst = std::max(worst, std::abs(static_cast<double>(got[i]) - want[i]) / std::max(1.0, std::abs(want[i])));
  }
  return worst;
}

}  // namespace cobatch::engine::test
