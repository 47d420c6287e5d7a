// A host-backend engine for tests: a run loop with its reactor and device,
// and a way to run a set of requests through an engine_loop to the end.
#pragma once

#include <cobatch/coro/completion_reactor.hpp>
#include <cobatch/coro/run_loop.hpp>
#include <cobatch/coro/sync_wait.hpp>
#include <cobatch/coro/use_task.hpp>
#include <cobatch/coro/when_all.hpp>
#include <cobatch/engine/step/engine_loop.hpp>
#include <cobatch/gpu/host/host_device.hpp>

#include <vector>

namespace cobatch::engine::test {

struct outcome {
  std::vector<std::int32_t> tokens;
  finish_reason finish = finish_reason::none;
  std::error_code error;
  std::string detail;
};

struct host_rig {
  coro::run_loop loop;
  coro::completion_reactor reactor{loop.get_executor()};
  gpu::host::host_device device{reactor};
  host_rig() { loop.attach(reactor); }
};

inline coro::task<void> consume(engine_loop& engine, std::vector<request_stream> streams, std::vector<outcome>& out) {
  out.resize(streams.size());
  for (std::size_t i = 0; i < streams.size(); ++i) {
    while (true) {
      auto [ec, chunk] = co_await streams[i].async_next(coro::as_tuple_task);
      if (ec) break;
      out[i].tokens.insert(out[i].tokens.end(), chunk.tokens.begin(), chunk.tokens.end());
      if (chunk.last()) {
        out[i].finish = chunk.finish;
        out[i].error = chunk.error;
        out[i].detail = chunk.detail;
        break;
      }
    }
  }
  engine.stop();
}

/// Submits every request, runs the engine until all have ended, returns
/// what each produced (in submission order).
inline std::vector<outcome> run_all(coro::run_loop& loop, engine_loop& engine, const std::vector<generation_request>& requests) {
  std::vector<request_stream> streams;
  for (const auto& r : requests) streams.push_back(engine.submit(r));
  std::vector<outcome> out;
  coro::sync_wait(loop, coro::when_all(engine.run(), consume(engine, std::move(streams), out)));
  return out;
}

}  // namespace cobatch::engine::test
