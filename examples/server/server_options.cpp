#include "server_options.hpp"

#include "llama_config.hpp"

#include <charconv>
#include <limits>
#include <stdexcept>
#include <string_view>

namespace cobatch::server {
namespace {

template <typename T>
T parse_int(std::string_view option, std::string_view value, T lo, T hi) {
  T out{};
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), out);
  if (ec != std::errc{} || end != value.data() + value.size() || out < lo || out > hi) {
    throw std::invalid_argument(std::string(option) + ": expected an integer in [" + std::to_string(lo) +
                                ", " + std::to_string(hi) + "], got '" + std::string(value) + "'");
  }
  return out;
}

model_source parse_model(std::string_view value) {
  model_source m;
  if (value == "seeded") return m;
  if (value.substr(0, 7) == "seeded:") {
    m.seed = parse_int<std::uint64_t>("--model seeded:SEED", value.substr(7), 0,
                                      std::numeric_limits<std::uint64_t>::max());
    return m;
  }
  if (value.size() > 12 && value.substr(value.size() - 12) == ".safetensors") {
    m.safetensors = std::string(value);
    return m;
  }
  throw std::invalid_argument("--model: expected 'seeded', 'seeded:SEED' or a path ending in "
                              "'.safetensors', got '" + std::string(value) + "'");
}

}  // namespace

std::string server_usage(const char* program) {
  return std::string("usage: ") + program + R"( [options]

An OpenAI-compatible completions server over cobatch's engine: HTTP/1.1 with
keep-alive, every request a coroutine, one engine loop batching them
continuously, tokens streamed back as server-sent events.

  --host ADDR               address to listen on (default 127.0.0.1)
  --port N                  port (default 8000; 0 picks a free one, printed)
  --model SPEC              'seeded', 'seeded:SEED' (random weights from SEED)
                            or PATH.safetensors (default seeded:0)
  --model-shape NAME        the reference model's shape: 'tiny' (hidden 128,
                            2 layers; its weights stay in cache) or 'small'
                            (hidden 512, 4 layers, 46 MB of weights; a decode
                            of one request is bound by reading them, as on a
                            GPU) (default tiny)
  --model-id NAME           the model name clients send (default: derived)
  --dcp-ranks N             decode-context-parallel ranks, in-process (default 1)
  --micro-batches N         most micro-batches a step is split into (default:
                            2 with more than one DCP rank, so that one's
                            exchange overlaps the other's compute; else 1)
  --max-running N           most requests in the running batch (default 256)
  --kv-pages N              KV cache pages per rank: the memory limit (default 4096)
  --page-size N             tokens per KV page (default 16)
  --blas-threads N          the host model's BLAS threads (default 0: the
                            machine's cores over the DCP ranks)
  --token-budget N          tokens per engine step, fixed (default 0: tuned)
  --min-token-budget N      the tuner's floor (default 256)
  --target-step-ms N        the tuner keeps steps under this (default 50)
  --max-queue N             completion requests waiting for admission; one more
                            gets 503 with Retry-After (default 256)
  --max-connections N       open connections; one more gets 503 (default 1024)
  --max-header-bytes N      request line + headers, else 431 (default 16384)
  --max-body-bytes N        request body, else 413 (default 1048576)
  --header-timeout-ms N     first byte to end of headers, else closed (default 10000)
  --body-timeout-ms N       end of headers to end of body, else closed (default 30000)
  --idle-timeout-ms N       idle keep-alive connections close after (default 60000)
  --shutdown-timeout-ms N   SIGTERM/SIGINT: in-flight requests may finish for this
                            long, then are cancelled (default 10000)
  --retry-after-s N         Retry-After of a 503 (default 1)
  --help                    this text

Endpoints: POST /v1/completions, GET /v1/models, GET /health, GET /metrics.
)";
}

server_options parse_server_options(int argc, char** argv) {
  server_options o;
  constexpr auto i32max = std::numeric_limits<std::int32_t>::max();
  constexpr std::size_t size_max = std::numeric_limits<std::int32_t>::max();
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      o.help = true;
      continue;
    }
    if (i + 1 >= argc) throw std::invalid_argument(std::string(arg) + ": missing value (see --help)");
    const std::string_view v = argv[++i];
    const auto ms = [&](std::string_view name) {
      return std::chrono::milliseconds(parse_int<std::int64_t>(name, v, 1, 86'400'000));
    };
    if (arg == "--host") o.host = std::string(v);
    else if (arg == "--port") o.port = parse_int<unsigned short>(arg, v, 0, 65535);
    else if (arg == "--model") o.engine.model = parse_model(v);
    else if (arg == "--model-shape") {
      try {
        (void)model::llama_config::named(v);
      } catch (const std::invalid_argument&) {
        throw std::invalid_argument("--model-shape: expected 'tiny' or 'small', got '" + std::string(v) + "'");
      }
      o.engine.model.shape = std::string(v);
    } else if (arg == "--model-id") o.engine.model_id = std::string(v);
    else if (arg == "--dcp-ranks") o.engine.dcp_ranks = parse_int<std::int32_t>(arg, v, 1, 64);
    else if (arg == "--micro-batches") o.engine.max_ubatches = parse_int<std::int32_t>(arg, v, 1, 64);
    else if (arg == "--max-running") o.engine.max_running = parse_int<std::int32_t>(arg, v, 1, i32max);
    else if (arg == "--kv-pages") o.engine.kv_pages = parse_int<std::int32_t>(arg, v, 1, i32max);
    else if (arg == "--page-size") o.engine.page_size = parse_int<std::int32_t>(arg, v, 1, 65536);
    else if (arg == "--blas-threads") o.engine.blas_threads = parse_int<std::int32_t>(arg, v, 0, 1024);
    else if (arg == "--token-budget") o.engine.token_budget = parse_int<std::int32_t>(arg, v, 0, 1 << 20);
    else if (arg == "--min-token-budget") o.engine.min_token_budget = parse_int<std::int32_t>(arg, v, 1, 8192);
    else if (arg == "--target-step-ms") o.engine.target_step_time = ms(arg);
    else if (arg == "--max-queue") o.limits.max_waiting = parse_int<std::size_t>(arg, v, 1, size_max);
    else if (arg == "--max-connections") o.limits.max_connections = parse_int<std::size_t>(arg, v, 1, size_max);
    else if (arg == "--max-header-bytes") o.limits.max_header_bytes = parse_int<std::size_t>(arg, v, 256, size_max);
    else if (arg == "--max-body-bytes") o.limits.max_body_bytes = parse_int<std::size_t>(arg, v, 1, size_max);
    else if (arg == "--header-timeout-ms") o.limits.header_timeout = ms(arg);
    else if (arg == "--body-timeout-ms") o.limits.body_timeout = ms(arg);
    else if (arg == "--idle-timeout-ms") o.limits.idle_timeout = ms(arg);
    else if (arg == "--shutdown-timeout-ms") o.limits.shutdown_timeout = ms(arg);
    else if (arg == "--retry-after-s") o.limits.retry_after_s = parse_int<int>(arg, v, 0, 86400);
    else throw std::invalid_argument("unknown option '" + std::string(arg) + "' (see --help)");
  }
  return o;
}

}  // namespace cobatch::server
