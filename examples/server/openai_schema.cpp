#include "openai_schema.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <limits>

namespace cobatch::server {
namespace {

using json = nlohmann::json;

api_error invalid(std::string param, std::string message) {
  return api_error{400, std::move(message), "invalid_request_error", std::move(param), {}};
}

const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  // null means "not given", as OpenAI treats it.
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

// The type name a client would recognise in an error message.
std::string json_type(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "integer";
    case json::value_t::number_float: return "number";
    case json::value_t::string: return "string";
    case json::value_t::array: return "array";
    case json::value_t::object: return "object";
    default: return "value";
  }
}

std::optional<api_error> read_number(const json& body, const char* name, double lo, double hi,
                                     bool lo_open, double& out) {
  const json* v = field(body, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) {
    return invalid(name, std::string("'") + name + "' must be a number, got " + json_type(*v));
  }
  const double x = v->get<double>();
  if (!std::isfinite(x) || x > hi || (lo_open ? x <= lo : x < lo)) {
    return invalid(name, std::string("'") + name + "' must be " + (lo_open ? "> " : ">= ") +
                             json(lo).dump() + " and <= " + json(hi).dump() + ", got " + v->dump());
  }
  out = x;
  return std::nullopt;
}

std::optional<api_error> read_prompt(const json& body, const model_card& model,
                                     completion_request& r) {
  const json* p = field(body, "prompt");
  if (p == nullptr) return invalid("prompt", "'prompt' is required");
  if (p->is_string()) {
    r.prompt_text = p->get<std::string>();
    return std::nullopt;
  }
  if (p->is_array()) {
    if (p->empty()) return invalid("prompt", "'prompt' must not be an empty array");
    if (p->size() == 1 && (*p)[0].is_string()) {
      r.prompt_text = (*p)[0].get<std::string>();
      return std::nullopt;
    }
    if ((*p)[0].is_string()) {
      return invalid("prompt", "'prompt' holds " + std::to_string(p->size()) +
                                   " strings; this server takes one prompt per request");
    }
    std::vector<std::int32_t> tokens;
    tokens.reserve(p->size());
    for (std::size_t i = 0; i < p->size(); ++i) {
      const json& t = (*p)[i];
      if (!t.is_number_integer() || t.get<std::int64_t>() < 0 ||
          t.get<std::int64_t>() >= static_cast<std::int64_t>(model.vocab_size)) {
        return invalid("prompt", "'prompt[" + std::to_string(i) + "]' must be a token id in [0, " +
                                     std::to_string(model.vocab_size) + "), got " + t.dump());
      }
      tokens.push_back(static_cast<std::int32_t>(t.get<std::int64_t>()));
    }
    r.prompt_tokens = std::move(tokens);
    return std::nullopt;
  }
  return invalid("prompt", "'prompt' must be a string, an array of one string or an array of "
                           "token ids, got " + json_type(*p));
}

std::optional<api_error> read_fields(const json& body, const model_card& model,
                                     completion_request& r) {
  const json* m = field(body, "model");
  if (m == nullptr) return invalid("model", "'model' is required");
  if (!m->is_string()) return invalid("model", "'model' must be a string, got " + json_type(*m));
  r.model = m->get<std::string>();
  if (r.model != model.id) {
    return api_error{404, "The model '" + r.model + "' does not exist; this server serves '" +
                              model.id + "'",
                     "invalid_request_error", "model", "model_not_found"};
  }
  if (auto e = read_prompt(body, model, r)) return e;

  if (const json* v = field(body, "max_tokens")) {
    if (!v->is_number_integer()) {
      return invalid("max_tokens", "'max_tokens' must be an integer, got " + json_type(*v));
    }
    const auto n = v->get<std::int64_t>();
    if (n < 1 || n > static_cast<std::int64_t>(model.context_length)) {
      return invalid("max_tokens", "'max_tokens' must be between 1 and " +
                                       std::to_string(model.context_length) + ", got " + v->dump());
    }
    r.max_tokens = static_cast<std::int32_t>(n);
  }
  if (auto e = read_number(body, "temperature", 0.0, 2.0, false, r.temperature)) return e;
  if (auto e = read_number(body, "top_p", 0.0, 1.0, true, r.top_p)) return e;
  if (const json* v = field(body, "seed")) {
    if (!v->is_number_integer()) {
      return invalid("seed", "'seed' must be an integer, got " + json_type(*v));
    }
    r.seed = v->is_number_unsigned() ? v->get<std::uint64_t>()
                                     : static_cast<std::uint64_t>(v->get<std::int64_t>());
  }
  if (const json* v = field(body, "stop")) {
    if (v->is_string()) {
      r.stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      if (v->size() > 4) {
        return invalid("stop", "'stop' holds at most 4 sequences, got " + std::to_string(v->size()));
      }
      for (const json& s : *v) {
        if (!s.is_string()) {
          return invalid("stop", "'stop' must hold strings, got " + json_type(s));
        }
        r.stop.push_back(s.get<std::string>());
      }
    } else {
      return invalid("stop", "'stop' must be a string or an array of strings, got " + json_type(*v));
    }
    for (const auto& s : r.stop) {
      if (s.empty()) return invalid("stop", "'stop' sequences must not be empty");
    }
  }
  if (const json* v = field(body, "stream")) {
    if (!v->is_boolean()) return invalid("stream", "'stream' must be a boolean, got " + json_type(*v));
    r.stream = v->get<bool>();
  }
  if (const json* v = field(body, "stream_options")) {
    if (!v->is_object()) {
      return invalid("stream_options", "'stream_options' must be an object, got " + json_type(*v));
    }
    if (const json* u = field(*v, "include_usage")) {
      if (!u->is_boolean()) {
        return invalid("stream_options", "'stream_options.include_usage' must be a boolean, got " +
                                             json_type(*u));
      }
      r.include_usage = u->get<bool>();
    }
  }
  if (const json* v = field(body, "n")) {
    if (!v->is_number_integer() || v->get<std::int64_t>() != 1) {
      return invalid("n", "'n' must be 1 on this server, got " + v->dump());
    }
  }
  if (const json* v = field(body, "best_of")) {
    if (!v->is_number_integer() || v->get<std::int64_t>() != 1) {
      return invalid("best_of", "'best_of' must be 1 on this server, got " + v->dump());
    }
  }
  if (const json* v = field(body, "echo")) {
    if (!v->is_boolean() || v->get<bool>()) {
      return invalid("echo", "'echo' is not supported; send false or leave it out");
    }
  }
  if (const json* v = field(body, "logprobs")) {
    return invalid("logprobs", "'logprobs' is not supported, got " + v->dump());
  }
  if (const json* v = field(body, "suffix")) {
    return invalid("suffix", "'suffix' is not supported, got " + json_type(*v));
  }
  return std::nullopt;
}

// Model output is arbitrary bytes; the text fields hold valid UTF-8 already
// (utf8_stream), but a replacement handler keeps a slip from throwing.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json choice(std::string_view text, std::optional<finish_reason> reason) {
  return json{{"text", text},
              {"index", 0},
              {"logprobs", nullptr},
              {"finish_reason",
               reason ? json(finish_reason_name(*reason)) : json(nullptr)}};
}

json usage_json(completion_usage u) {
  return json{{"prompt_tokens", u.prompt_tokens},
              {"completion_tokens", u.completion_tokens},
              {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

}  // namespace

std::variant<completion_request, api_error> parse_completion_request(std::string_view body,
                                                                     const model_card& model) {
  json parsed;
  try {
    parsed = json::parse(body);
  } catch (const json::parse_error& e) {
    return invalid("", std::string("The body is not valid JSON: ") + e.what());
  }
  if (!parsed.is_object()) {
    return invalid("", "The body must be a JSON object, got " + json_type(parsed));
  }
  completion_request r;
  if (auto e = read_fields(parsed, model, r)) return *std::move(e);
  return r;
}

std::string error_body(const api_error& e) {
  return dump(json{{"error",
                    {{"message", e.message},
                     {"type", e.type},
                     {"param", e.param.empty() ? json(nullptr) : json(e.param)},
                     {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}});
}

std::string_view finish_reason_name(finish_reason r) noexcept {
  return r == finish_reason::stop ? "stop" : "length";
}

std::string completion_body(std::string_view id, std::int64_t created, std::string_view model,
                            std::string_view text, finish_reason reason, completion_usage usage) {
  return dump(json{{"id", id},
                   {"object", "text_completion"},
                   {"created", created},
                   {"model", model},
                   {"choices", json::array({choice(text, reason)})},
                   {"usage", usage_json(usage)}});
}

std::string completion_chunk(std::string_view id, std::int64_t created, std::string_view model,
                             std::string_view text, std::optional<finish_reason> reason) {
  return dump(json{{"id", id},
                   {"object", "text_completion"},
                   {"created", created},
                   {"model", model},
                   {"choices", json::array({choice(text, reason)})}});
}

std::string usage_chunk(std::string_view id, std::int64_t created, std::string_view model,
                        completion_usage usage) {
  return dump(json{{"id", id},
                   {"object", "text_completion"},
                   {"created", created},
                   {"model", model},
                   {"choices", json::array()},
                   {"usage", usage_json(usage)}});
}

std::string models_body(const model_card& model) {
  return dump(json{{"object", "list"},
                   {"data", json::array({json{{"id", model.id},
                                              {"object", "model"},
                                              {"created", model.created},
                                              {"owned_by", "cobatch"},
                                              {"tokenizer", model.tokenizer},
                                              {"vocab_size", model.vocab_size},
                                              {"max_model_len", model.context_length}}})}});
}

std::string health_body() { return R"({"status":"ok"})"; }

}  // namespace cobatch::server
