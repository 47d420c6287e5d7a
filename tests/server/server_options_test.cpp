#include "server_options.hpp"

#include <catch2/catch.hpp>

#include <stdexcept>
#include <string>
#include <vector>

using namespace cobatch::server;

namespace {
// parse_server_options takes argv as main() gets it.
server_options parse(std::vector<std::string> args) {
  args.insert(args.begin(), "cobatch_server");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return parse_server_options(static_cast<int>(argv.size()), argv.data());
}

std::string error_of(std::vector<std::string> args) {
  try {
    parse(std::move(args));
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  FAIL("the options were accepted");
  return {};
}
}  // namespace

TEST_CASE("server options: the model's source and shape", "[server][options]") {
  const server_options defaults = parse({});
  CHECK(defaults.engine.model.seed == 0);
  CHECK_FALSE(defaults.engine.model.safetensors);
  CHECK(defaults.engine.model.shape == "tiny");

  const server_options o = parse({"--model", "seeded:7", "--model-shape", "small"});
  CHECK(o.engine.model.seed == 7);
  CHECK(o.engine.model.shape == "small");

  CHECK(parse({"--model", "weights/w.safetensors"}).engine.model.safetensors == "weights/w.safetensors");
  CHECK(defaults.engine.blas_threads == 0);
  CHECK(parse({"--blas-threads", "3"}).engine.blas_threads == 3);
}

TEST_CASE("server options: micro-batches split a step only where a collective overlaps", "[server][options]") {
  CHECK(effective_max_ubatches(parse({}).engine) == 1);
  CHECK(effective_max_ubatches(parse({"--dcp-ranks", "2"}).engine) == 2);
  CHECK(effective_max_ubatches(parse({"--micro-batches", "3"}).engine) == 3);
  CHECK(effective_max_ubatches(parse({"--dcp-ranks", "2", "--micro-batches", "1"}).engine) == 1);
}

TEST_CASE("server options: bad values name the option and the value", "[server][options]") {
  CHECK(error_of({"--model-shape", "huge"}) == "--model-shape: expected 'tiny' or 'small', got 'huge'");
  CHECK_THAT(error_of({"--model", "weights.bin"}), Catch::Contains("--model") && Catch::Contains("weights.bin"));
  CHECK_THAT(error_of({"--port", "70000"}), Catch::Contains("--port") && Catch::Contains("70000"));
  CHECK_THAT(error_of({"--micro-batches", "0"}), Catch::Contains("--micro-batches"));
  CHECK_THAT(error_of({"--blas-threads", "-1"}), Catch::Contains("--blas-threads") && Catch::Contains("-1"));
  CHECK(error_of({"--kv-pages"}) == "--kv-pages: missing value (see --help)");
  CHECK(error_of({"--no-such", "1"}) == "unknown option '--no-such' (see --help)");
}
