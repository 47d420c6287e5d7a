// The CUDA attention kernels against the host kernels (the reference every
// CPU test checks against float64), on the same problems and page layouts.
#include "cuda_fixture.hpp"

#include "../../engine/attention/attention_harness.hpp"

#include <cobatch/coro/sync_wait.hpp>
#include <cobatch/coro/use_task.hpp>
#include <cobatch/gpu/copy.hpp>
#include <cobatch/gpu/kernels/attention_kernels.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>

using namespace cobatch;
using namespace cobatch::engine;
using namespace cobatch::engine::test;

namespace {

void wait(cuda_test::fixture& f, gpu::stream_ref s) {
  coro::sync_wait(f.loop, [](gpu::stream_ref st) -> coro::task<void> { co_await st.async_wait(coro::use_task); }(s));
}

template <class T>
std::vector<T> to_host(cuda_test::fixture& f, const gpu::device_buffer& b, gpu::stream_ref s) {
  std::vector<T> out(b.size() / sizeof(T));
  gpu::copy_async(std::span<T>(out), b.as<const T>(), s);
  wait(f, s);
  return out;
}

gpu::device_buffer to_device(cuda_test::fixture& f, const gpu::device_buffer& host, gpu::stream_ref s) {
  gpu::device_buffer d = gpu::allocate(f.dev, host.size());
  gpu::copy_async(d.as<std::byte>(), std::span<const std::byte>(host.as<const std::byte>().host_span()), s);
  wait(f, s);
  return d;
}

}  // namespace

TEST_CASE("device memory: copies both ways and 1-, 2- and 4-byte fills", "[cuda][attention][memory]") {
  cuda_test::fixture f;
  auto s = f.dev.make_stream();
  gpu::typed_buffer<float> a(f.dev, 1000);
  gpu::typed_buffer<gpu::bf16> h(f.dev, 777);
  std::vector<float> in = cuda_test::random_floats(1000, 3), out(1000);
  gpu::copy_async(a.span(), std::span<const float>(in), s);
  gpu::typed_buffer<float> b(f.dev, 1000);
  gpu::copy_async(b.span(), a.span(), s);
  gpu::copy_async(std::span<float>(out), b.span(), s);
  gpu::fill_async(h.span(), gpu::bf16::from_float(1.5f), s);
  std::vector<gpu::bf16> hs(777);
  gpu::copy_async(std::span<gpu::bf16>(hs), h.span(), s);
  wait(f, s);
  CHECK(out == in);
  for (auto x : hs) REQUIRE(x.to_float() == 1.5f);
}

TEST_CASE("CUDA paged attention equals the host kernels (decode, prefill, mixed, split KV, bf16)",
          "[cuda][attention]") {
  cuda_test::fixture f;
  attention_env env;
  // Groups of 3 and 8 leave the kernel's last tile of query heads partly
  // empty, or take two tiles per KV head.
  problem_options options;
  options.groups = {1, 2, 3, 4, 8};
  for (std::uint32_t seed = 1; seed <= 24; ++seed) {
    std::mt19937 rng(seed);
    problem p = random_problem(rng, options);
    if (seed % 3 == 0) {
      p.storage = gpu::data_type::bf16;
      p.round_to_storage();
    }
    group_options g;
    g.kv_chunk_pages = seed % 2;
    // The host run: a rank whose cache holds the prefix, appending this step.
    rank_state rs;
    setup_rank(env, p, g, 0, rs, rng, nullptr);
    rs.attn->plan({p.batch(), rs.table.view()}, rs.plan);
    gpu::device_buffer cache_before = gpu::allocate(env.dev, rs.cache->bytes().size());
    std::memcpy(cache_before.data(), rs.cache->bytes().data(), rs.cache->bytes().size());
    rs.attn->enqueue_run(rs.plan, io_of(p, rs, g, 0), rs.compute, rs.comm);
    env.wait({rs.compute, rs.comm});

    // The same on the GPU, from the same cache bytes and pages.
    auto s = f.dev.make_stream();
    paged_kv_cache cache(f.dev, rs.cache->config());
    gpu::copy_async(cache.bytes(), std::span<const std::byte>(cache_before.as<const std::byte>().host_span()), s);
    gpu::device_buffer q = to_device(f, rs.q, s), k = to_device(f, rs.new_k, s), v = to_device(f, rs.new_v, s);
    gpu::device_buffer out = gpu::allocate(f.dev, rs.out.size()), lse = gpu::allocate(f.dev, rs.lse.size());
    batch_attention attn(f.dev, cache, rs.attn->config());
    attention_plan plan;
    attn.plan({p.batch(), rs.table.view()}, plan);
    attention_io io{0, typed(q, p.storage), typed(k, p.storage), typed(v, p.storage), typed(out, p.storage),
                    lse_ref::base_e(lse.as<float>())};
    coro::sync_wait(f.loop, [&]() -> coro::task<void> {
      co_await attn.async_run(plan, io, s, s, coro::use_task);
    }());
    const auto got_out = to_host<std::byte>(f, out, s);
    const auto got_lse = to_host<float>(f, lse, s);
    INFO("seed " << seed << " storage " << gpu::name_of(p.storage));
    double worst = 0;
    const std::size_t n = rs.out.size() / gpu::size_of(p.storage);
    for (std::size_t i = 0; i < n; ++i) {
      const float want = load(rs.out, p.storage, i);
      const float have = p.storage == gpu::data_type::f32 ? reinterpret_cast<const float*>(got_out.data())[i]
                                                          : reinterpret_cast<const gpu::bf16*>(got_out.data())[i].to_float();
      worst = std::max(worst, static_cast<double>(std::abs(have - want)));
    }
    CHECK(worst <= (p.storage == gpu::data_type::f32 ? 1e-4 : 1.0 / 64));
    for (std::size_t i = 0; i < got_lse.size(); ++i) {
      REQUIRE(got_lse[i] == Approx(rs.lse.as<float>().data()[i]).epsilon(1e-4).margin(1e-4));
    }
  }
}

TEST_CASE("CUDA LSE merge equals the host merge, empty shards included", "[cuda][attention][lse]") {
  cuda_test::fixture f;
  auto s = f.dev.make_stream();
  std::mt19937 rng(9);
  const std::int32_t shards = 8, d = 128;
  const std::int64_t rows = 333;
  std::vector<float> o(static_cast<std::size_t>(shards * rows * d)), l(static_cast<std::size_t>(shards * rows));
  std::uniform_real_distribution<float> val(-2, 2), lv(-20, 20);
  for (auto& x : o) x = val(rng);
  for (std::size_t i = 0; i < l.size(); ++i) {
    l[i] = lv(rng);
    if (i % 7 == 0) l[i] = -std::numeric_limits<float>::infinity();
    if (i % 11 == 0) l[i] = std::numeric_limits<float>::quiet_NaN();
    if (i % 13 == 0) l[i] = std::numeric_limits<float>::infinity();
  }
  for (std::int32_t i = 0; i < shards; ++i) l[static_cast<std::size_t>(i * rows + 5)] = -std::numeric_limits<float>::infinity();
  gpu::typed_buffer<float> dout(f.dev, o.size()), dlse(f.dev, l.size()), mout(f.dev, static_cast<std::size_t>(rows * d)),
      mlse(f.dev, static_cast<std::size_t>(rows));
  gpu::copy_async(dout.span(), std::span<const float>(o), s);
  gpu::copy_async(dlse.span(), std::span<const float>(l), s);
  gpu::kernels::lse_merge_args a;
  a.num_shards = shards;
  a.rows = rows;
  a.head_dim = d;
  a.shard_out = dout.data();
  a.shard_out_stride = rows * d;
  a.shard_lse = dlse.data();
  a.shard_lse_stride = rows;
  a.out = mout.data();
  a.out_lse = mlse.data();
  gpu::kernels::enqueue_lse_merge(gpu::backend_kind::cuda, a, s);
  std::vector<float> got(static_cast<std::size_t>(rows * d)), got_lse(static_cast<std::size_t>(rows));
  gpu::copy_async(std::span<float>(got), mout.span(), s);
  gpu::copy_async(std::span<float>(got_lse), mlse.span(), s);
  wait(f, s);
  std::vector<float> want(got.size()), want_lse(got_lse.size());
  a.shard_out = o.data();
  a.shard_lse = l.data();
  a.out = want.data();
  a.out_lse = want_lse.data();
  gpu::kernels::host::lse_merge(a);
  for (std::size_t i = 0; i < got.size(); ++i) {
    REQUIRE(std::isfinite(got[i]));
    REQUIRE(got[i] == Approx(want[i]).epsilon(1e-4).margin(1e-5));
  }
  CHECK(got_lse[5] == -std::numeric_limits<float>::infinity());
  for (std::size_t r = 0; r < got_lse.size(); ++r) {
    if (std::isinf(want_lse[r])) {
      REQUIRE(got_lse[r] == want_lse[r]);
    } else {
      REQUIRE(got_lse[r] == Approx(want_lse[r]).epsilon(1e-5));
    }
  }
}
