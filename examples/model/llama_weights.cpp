#include "llama_weights.hpp"

#include <nlohmann/json.hpp>

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <stdexcept>

namespace cobatch::model {

void validate(const llama_config& c) {
  auto bad = [](const std::string& what, double v) {
    throw std::invalid_argument("llama_config: " + what + " " + std::to_string(v) + " is out of range");
  };
  if (c.vocab_size < 1) bad("vocab_size", c.vocab_size);
  if (c.hidden < 1) bad("hidden", c.hidden);
  if (c.num_layers < 1) bad("num_layers", c.num_layers);
  if (c.num_heads < 1) bad("num_heads", c.num_heads);
  if (c.num_kv_heads < 1 || c.num_heads % c.num_kv_heads != 0) bad("num_kv_heads (must divide num_heads)", c.num_kv_heads);
  if (c.head_dim != 64 && c.head_dim != 128) bad("head_dim (64 or 128)", c.head_dim);
  if (c.intermediate < 1) bad("intermediate", c.intermediate);
  if (c.max_context < 1) bad("max_context", c.max_context);
  if (!(c.rms_eps > 0.0f)) bad("rms_eps", c.rms_eps);
  if (!(c.rope_theta > 0.0f)) bad("rope_theta", c.rope_theta);
}

llama_config llama_config::named(std::string_view name) {
  if (name == "tiny") return tiny();
  if (name == "small") return small();
  throw std::invalid_argument("llama_config: unknown shape '" + std::string(name) + "' (expected 'tiny' or 'small')");
}

namespace {

std::uint64_t splitmix(std::uint64_t& state) noexcept {
  std::uint64_t x = (state += 0x9e3779b97f4a7c15ull);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::vector<float> uniform(std::size_t n, float scale, std::uint64_t& state) {
  std::vector<float> v(n);
  for (float& x : v) x = scale * static_cast<float>(static_cast<double>(splitmix(state) >> 11) * 0x1.0p-53 * 2.0 - 1.0);
  return v;
}

struct named {
  std::string name;
  const std::vector<float>* data;
  std::vector<std::int64_t> shape;
};

std::vector<named> tensors_of(const llama_weights& w) {
  const llama_config& c = w.config;
  std::vector<named> out;
  out.push_back({"model.embed_tokens.weight", &w.embed, {c.vocab_size, c.hidden}});
  for (std::int32_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const auto& L = w.layers[static_cast<std::size_t>(l)];
    out.push_back({p + "input_layernorm.weight", &L.attn_norm, {c.hidden}});
    out.push_back({p + "self_attn.q_proj.weight", &L.wq, {c.q_dim(), c.hidden}});
    out.push_back({p + "self_attn.k_proj.weight", &L.wk, {c.kv_dim(), c.hidden}});
    out.push_back({p + "self_attn.v_proj.weight", &L.wv, {c.kv_dim(), c.hidden}});
    out.push_back({p + "self_attn.o_proj.weight", &L.wo, {c.hidden, c.q_dim()}});
    out.push_back({p + "post_attention_layernorm.weight", &L.mlp_norm, {c.hidden}});
    out.push_back({p + "mlp.gate_proj.weight", &L.w_gate, {c.intermediate, c.hidden}});
    out.push_back({p + "mlp.up_proj.weight", &L.w_up, {c.intermediate, c.hidden}});
    out.push_back({p + "mlp.down_proj.weight", &L.w_down, {c.hidden, c.intermediate}});
  }
  out.push_back({"model.norm.weight", &w.final_norm, {c.hidden}});
  out.push_back({"lm_head.weight", &w.lm_head, {c.vocab_size, c.hidden}});
  return out;
}

float from_bf16(std::uint16_t v) noexcept { return std::bit_cast<float>(static_cast<std::uint32_t>(v) << 16); }

float from_f16(std::uint16_t h) noexcept {
  const std::uint32_t sign = (h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    if (mant == 0) return std::bit_cast<float>(sign);
    while ((mant & 0x400u) == 0) {  // subnormal: normalise
      mant <<= 1;
      --exp;
    }
    ++exp;
    mant &= 0x3ffu;
  } else if (exp == 31) {
    return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  }
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
}

}  // namespace

llama_weights llama_weights::seeded(const llama_config& c, std::uint64_t seed) {
  validate(c);
  llama_weights w;
  w.config = c;
  std::uint64_t state = seed;
  const float s = 1.0f / std::sqrt(static_cast<float>(c.hidden));
  const auto H = static_cast<std::size_t>(c.hidden);
  w.embed = uniform(static_cast<std::size_t>(c.vocab_size) * H, 1.0f, state);
  for (std::int32_t l = 0; l < c.num_layers; ++l) {
    llama_layer_weights L;
    L.attn_norm = std::vector<float>(H, 1.0f);
    L.wq = uniform(static_cast<std::size_t>(c.q_dim()) * H, s, state);
    L.wk = uniform(static_cast<std::size_t>(c.kv_dim()) * H, s, state);
    L.wv = uniform(static_cast<std::size_t>(c.kv_dim()) * H, s, state);
    L.wo = uniform(H * static_cast<std::size_t>(c.q_dim()), 1.0f / std::sqrt(static_cast<float>(c.q_dim())), state);
    L.mlp_norm = std::vector<float>(H, 1.0f);
    L.w_gate = uniform(static_cast<std::size_t>(c.intermediate) * H, s, state);
    L.w_up = uniform(static_cast<std::size_t>(c.intermediate) * H, s, state);
    L.w_down = uniform(H * static_cast<std::size_t>(c.intermediate), 1.0f / std::sqrt(static_cast<float>(c.intermediate)), state);
    w.layers.push_back(std::move(L));
  }
  w.final_norm = std::vector<float>(H, 1.0f);
  // Spread logits well apart, so greedy choices are clear (top-2 gaps).
  w.lm_head = uniform(static_cast<std::size_t>(c.vocab_size) * H, 4.0f * s, state);
  return w;
}

llama_weights llama_weights::load_safetensors(const std::string& path, const llama_config& config) {
  validate(config);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("safetensors: cannot open " + path);
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto fail = [&](const std::string& why) -> std::runtime_error { return std::runtime_error("safetensors: " + path + ": " + why); };
  if (bytes.size() < 8) throw fail("shorter than its 8-byte header length");
  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
  if (header_len > bytes.size() - 8) throw fail("header length " + std::to_string(header_len) + " runs past the file");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(header_len));
  } catch (const nlohmann::json::exception& e) {
    throw fail(std::string("bad header JSON: ") + e.what());
  }
  const std::size_t data_begin = 8 + header_len;
  const std::size_t data_size = bytes.size() - data_begin;

  llama_weights w;
  w.config = config;
  w.layers.resize(static_cast<std::size_t>(config.num_layers));
  auto read = [&](const std::string& name, const std::vector<std::int64_t>& shape, std::vector<float>& out) {
    if (!header.contains(name)) throw fail("tensor " + name + " is missing");
    const auto& t = header.at(name);
    const std::string dtype = t.at("dtype").get<std::string>();
    const auto got = t.at("shape").get<std::vector<std::int64_t>>();
    if (got != shape) {
      std::string g, e;
      for (auto v : got) g += std::to_string(v) + " ";
      for (auto v : shape) e += std::to_string(v) + " ";
      throw fail("tensor " + name + " has shape [ " + g + "], the configuration needs [ " + e + "]");
    }
    const auto offsets = t.at("data_offsets").get<std::vector<std::uint64_t>>();
    if (offsets.size() != 2 || offsets[0] > offsets[1] || offsets[1] > data_size)
      throw fail("tensor " + name + " has data_offsets outside the data");
    std::size_t count = 1;
    for (auto v : shape) count *= static_cast<std::size_t>(v);
    const std::size_t width = dtype == "F32" ? 4 : (dtype == "BF16" || dtype == "F16") ? 2 : 0;
    if (width == 0) throw fail("tensor " + name + " has dtype " + dtype + "; F32, BF16 and F16 are read");
    if (offsets[1] - offsets[0] != count * width) throw fail("tensor " + name + " holds the wrong number of bytes");
    const char* p = bytes.data() + data_begin + offsets[0];
    out.resize(count);
    for (std::size_t i = 0; i < count; ++i) {
      if (width == 4) {
        std::memcpy(&out[i], p + 4 * i, 4);
      } else {
        std::uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = dtype == "BF16" ? from_bf16(h) : from_f16(h);
      }
    }
  };
  for (const named& t : tensors_of(w)) {
    auto* target = const_cast<std::vector<float>*>(t.data);
    if (t.name == "lm_head.weight" && !header.contains(t.name)) {
      read("model.embed_tokens.weight", t.shape, *target);  // tied embeddings
    } else {
      read(t.name, t.shape, *target);
    }
  }
  return w;
}

void llama_weights::save_safetensors(const std::string& path) const {
  nlohmann::json header = nlohmann::json::object();
  std::uint64_t offset = 0;
  const auto tensors = tensors_of(*this);
  for (const named& t : tensors) {
    const std::uint64_t bytes = t.data->size() * 4;
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  while (text.size() % 8 != 0) text.push_back(' ');  // the format pads the header with spaces
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error("safetensors: cannot write " + path);
  const std::uint64_t len = text.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((len >> (8 * i)) & 0xff));
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const named& t : tensors) out.write(reinterpret_cast<const char*>(t.data->data()), static_cast<std::streamsize>(t.data->size() * 4));
  if (!out) throw std::runtime_error("safetensors: writing " + path + " failed");
}

}  // namespace cobatch::model
