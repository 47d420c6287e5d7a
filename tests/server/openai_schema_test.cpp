#include "openai_schema.hpp"

#include <catch2/catch.hpp>

#include <variant>

using namespace cobatch::server;

namespace {
model_card card() {
  return model_card{std::string(1, 'm'), "byte-level", 258, 512, 0};
}

api_error error_of(std::string_view body) {
  auto r = parse_completion_request(body, card());
  REQUIRE(std::holds_alternative<api_error>(r));
  return std::get<api_error>(r);
}
}  // namespace

TEST_CASE("parse_completion_request reads OpenAI's fields", "[server][openai]") {
  auto r = parse_completion_request(
      R"({"model":"m","prompt":"hi","max_tokens":5,"temperature":0.5,"top_p":0.9,"seed":7,"stop":["a","b"],"stream":true,"stream_options":{"include_usage":true},"user":"ignored"})",
      card());
  REQUIRE(std::holds_alternative<completion_request>(r));
  const auto& c = std::get<completion_request>(r);
  CHECK(c.prompt_text == "hi");
  CHECK(c.max_tokens == 5);
  CHECK(c.temperature == 0.5);
  CHECK(c.top_p == Approx(0.9));
  CHECK(c.seed == 7u);
  CHECK(c.stop == std::vector<std::string>{"a", "b"});
  CHECK(c.stream);
  CHECK(c.include_usage);
  auto tokens = parse_completion_request(R"({"model":"m","prompt":[1,2,257]})", card());
  REQUIRE(std::holds_alternative<completion_request>(tokens));
  CHECK(*std::get<completion_request>(tokens).prompt_tokens == std::vector<std::int32_t>{1, 2, 257});
}

TEST_CASE("parse_completion_request names the offending field", "[server][openai]") {
  CHECK(error_of("{").param.empty());
  CHECK(error_of("{").message.find("not valid JSON") != std::string::npos);
  CHECK(error_of(R"({"prompt":"x"})").param == "model");
  auto unknown = error_of(R"({"model":"x","prompt":"x"})");
  CHECK(unknown.status == 404);
  CHECK(unknown.code == "model_not_found");
  CHECK(error_of(R"({"model":"m"})").param == "prompt");
  CHECK(error_of(R"({"model":"m","prompt":[1,258]})").param == "prompt");
  CHECK(error_of(R"({"model":"m","prompt":"x","max_tokens":0})").param == "max_tokens");
  CHECK(error_of(R"({"model":"m","prompt":"x","max_tokens":1.5})").param == "max_tokens");
  CHECK(error_of(R"({"model":"m","prompt":"x","temperature":-1})").param == "temperature");
  CHECK(error_of(R"({"model":"m","prompt":"x","top_p":0})").param == "top_p");
  CHECK(error_of(R"({"model":"m","prompt":"x","seed":"1"})").param == "seed");
  CHECK(error_of(R"({"model":"m","prompt":"x","stop":[""]})").param == "stop");
  CHECK(error_of(R"({"model":"m","prompt":"x","stream":"yes"})").param == "stream");
  CHECK(error_of(R"({"model":"m","prompt":"x","n":2})").param == "n");
}

TEST_CASE("error_body is OpenAI's error object", "[server][openai]") {
  CHECK(error_body({400, "bad", "invalid_request_error", "max_tokens", {}}) ==
        R"({"error":{"code":null,"message":"bad","param":"max_tokens","type":"invalid_request_error"}})");
}
