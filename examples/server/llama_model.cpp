#include "llama_model.hpp"

#include <cblas.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <numeric>
#include <stdexcept>

// OpenBLAS's own (not every cblas.h declares it).
extern "C" void openblas_set_num_threads(int num_threads);

namespace cobatch::server {
namespace {

std::uint64_t splitmix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// A uniform draw in [0, 1) that depends only on (seed, index): the same
// token of the same request draws the same number however it is batched.
double uniform(std::uint64_t seed, std::uint64_t index) {
  return static_cast<double>(splitmix(splitmix(seed) ^ (index * 0xd1b54a32d192ed03ull)) >> 11) * 0x1.0p-53;
}

// y[rows, out] = x[rows, in] * W^T, W stored [out, in] (PyTorch's Linear).
void linear(const float* x, const std::vector<float>& w, float* y, std::int32_t rows, std::int32_t in,
            std::int32_t out) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, out, in, 1.0f, x, in, w.data(), in, 0.0f, y, out);
}

void rms_norm(const float* x, const std::vector<float>& weight, float* y, std::int32_t rows, std::int32_t dim,
              float eps) {
  for (std::int32_t r = 0; r < rows; ++r) {
    const float* xr = x + static_cast<std::size_t>(r) * dim;
    float* yr = y + static_cast<std::size_t>(r) * dim;
    double ss = 0;
    for (std::int32_t i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float scale = 1.0f / std::sqrt(static_cast<float>(ss / dim) + eps);
    for (std::int32_t i = 0; i < dim; ++i) yr[i] = xr[i] * scale * weight[static_cast<std::size_t>(i)];
  }
}

std::vector<float> normal_matrix(std::uint64_t& state, std::size_t n, float stddev) {
  std::vector<float> out(n);
  for (std::size_t i = 0; i < n; i += 2) {
    // Box-Muller on two splitmix draws: portable, unlike std::normal_distribution.
    state = splitmix(state);
    const double u1 = (static_cast<double>(state >> 11) + 1.0) * 0x1.0p-53;
    state = splitmix(state);
    const double u2 = static_cast<double>(state >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    out[i] = static_cast<float>(r * std::cos(2 * M_PI * u2) * stddev);
    if (i + 1 < n) out[i + 1] = static_cast<float>(r * std::sin(2 * M_PI * u2) * stddev);
  }
  return out;
}

float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = (h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1f;
  std::uint32_t mant = h & 0x3ff;
  std::uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace

std::shared_ptr<const llama_weights> llama_weights::seeded(const llama_config& c, std::uint64_t seed) {
  if (c.dim % c.heads != 0 || c.heads % c.kv_heads != 0 || c.head_dim() % 2 != 0) {
    throw std::invalid_argument("llama_weights::seeded: dim must split into an even head_dim per head, and heads "
                                "into kv_heads groups");
  }
  auto w = std::make_shared<llama_weights>();
  w->config = c;
  std::uint64_t state = seed;
  const auto d = static_cast<std::size_t>(c.dim);
  const auto hd = static_cast<std::size_t>(c.head_dim());
  const auto f = static_cast<std::size_t>(c.ffn_dim);
  const auto v = static_cast<std::size_t>(c.vocab_size);
  const float in_d = 1.0f / std::sqrt(static_cast<float>(c.dim));
  w->embed = normal_matrix(state, v * d, 1.0f);
  for (std::int32_t l = 0; l < c.layers; ++l) {
    layer L;
    L.attn_norm.assign(d, 1.0f);
    L.wq = normal_matrix(state, static_cast<std::size_t>(c.heads) * hd * d, in_d);
    L.wk = normal_matrix(state, static_cast<std::size_t>(c.kv_heads) * hd * d, in_d);
    L.wv = normal_matrix(state, static_cast<std::size_t>(c.kv_heads) * hd * d, in_d);
    L.wo = normal_matrix(state, d * static_cast<std::size_t>(c.heads) * hd, in_d);
    L.mlp_norm.assign(d, 1.0f);
    L.w_gate = normal_matrix(state, f * d, in_d);
    L.w_up = normal_matrix(state, f * d, in_d);
    L.w_down = normal_matrix(state, d * f, 1.0f / std::sqrt(static_cast<float>(c.ffn_dim)));
    w->layers.push_back(std::move(L));
  }
  w->norm.assign(d, 1.0f);
  // Logits with a spread of a few units: random text, but not uniform noise.
  w->lm_head = normal_matrix(state, v * d, 3.0f * in_d);
  return w;
}

std::shared_ptr<const llama_weights> llama_weights::load_safetensors(const std::string& path,
                                                                     std::int32_t max_context) {
  using json = nlohmann::json;
  const auto fail = [&](const std::string& what) -> std::runtime_error {
    return std::runtime_error("safetensors '" + path + "': " + what);
  };
  std::ifstream in(path, std::ios::binary);
  if (!in) throw fail("cannot open the file");
  std::uint64_t header_len = 0;
  unsigned char len_bytes[8];
  if (!in.read(reinterpret_cast<char*>(len_bytes), 8)) throw fail("shorter than its 8-byte header length");
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (header_len > (std::uint64_t{1} << 30)) throw fail("header length " + std::to_string(header_len) + " is absurd");
  std::string header(header_len, '\0');
  if (!in.read(header.data(), static_cast<std::streamsize>(header_len))) throw fail("truncated header");
  json h;
  try {
    h = json::parse(header);
  } catch (const json::parse_error& e) {
    throw fail(std::string("header is not JSON: ") + e.what());
  }
  const std::streamoff data_start = static_cast<std::streamoff>(8 + header_len);

  const auto tensor = [&](const std::string& name, std::vector<std::int64_t> want) -> std::vector<float> {
    if (!h.contains(name)) throw fail("no tensor '" + name + "'");
    const json& t = h[name];
    const std::string dtype = t.at("dtype").get<std::string>();
    const auto shape = t.at("shape").get<std::vector<std::int64_t>>();
    if (shape != want) {
      std::string s = "[";
      for (auto x : shape) s += std::to_string(x) + ",";
      throw fail("tensor '" + name + "' has shape " + s + "], not the one the model needs");
    }
    const auto offsets = t.at("data_offsets").get<std::vector<std::uint64_t>>();
    std::size_t n = 1;
    for (auto x : shape) n *= static_cast<std::size_t>(x);
    const std::size_t width = dtype == "F32" ? 4 : (dtype == "F16" || dtype == "BF16") ? 2 : 0;
    if (width == 0) throw fail("tensor '" + name + "' has dtype " + dtype + "; F32, F16 and BF16 are read");
    if (offsets.size() != 2 || offsets[1] - offsets[0] != n * width) {
      throw fail("tensor '" + name + "' data_offsets do not match its shape and dtype");
    }
    std::vector<unsigned char> raw(n * width);
    in.seekg(data_start + static_cast<std::streamoff>(offsets[0]));
    if (!in.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size()))) {
      throw fail("tensor '" + name + "' is cut short");
    }
    std::vector<float> out(n);
    for (std::size_t i = 0; i < n; ++i) {
      if (width == 4) {
        std::memcpy(&out[i], &raw[i * 4], 4);
      } else {
        const std::uint16_t bits = static_cast<std::uint16_t>(raw[i * 2] | (raw[i * 2 + 1] << 8));
        if (dtype == "BF16") {
          const std::uint32_t b = static_cast<std::uint32_t>(bits) << 16;
          std::memcpy(&out[i], &b, 4);
        } else {
          out[i] = half_to_float(bits);
        }
      }
    }
    return out;
  };
  const auto shape_of = [&](const std::string& name) {
    if (!h.contains(name)) throw fail("no tensor '" + name + "'");
    return h[name].at("shape").get<std::vector<std::int64_t>>();
  };
  const json meta = h.value("__metadata__", json::object());
  const auto meta_int = [&](const char* key, std::int64_t fallback) -> std::int64_t {
    if (!meta.contains(key)) {
      if (fallback < 0) throw fail(std::string("__metadata__ lacks '") + key + "'");
      return fallback;
    }
    try {
      return std::stoll(meta[key].get<std::string>());
    } catch (const std::exception&) {
      throw fail(std::string("__metadata__ '") + key + "' is not an integer string");
    }
  };

  llama_config c;
  const auto embed_shape = shape_of("model.embed_tokens.weight");
  if (embed_shape.size() != 2) throw fail("model.embed_tokens.weight is not a matrix");
  c.vocab_size = static_cast<std::int32_t>(embed_shape[0]);
  c.dim = static_cast<std::int32_t>(embed_shape[1]);
  if (c.vocab_size < 256) throw fail("vocabulary of " + std::to_string(c.vocab_size) + " < 256: not byte-level");
  c.heads = static_cast<std::int32_t>(meta_int("num_attention_heads", -1));
  c.kv_heads = static_cast<std::int32_t>(meta_int("num_key_value_heads", c.heads));
  c.layers = 0;
  while (h.contains("model.layers." + std::to_string(c.layers) + ".input_layernorm.weight")) ++c.layers;
  if (c.layers == 0) throw fail("no model.layers.0.input_layernorm.weight");
  c.ffn_dim = static_cast<std::int32_t>(shape_of("model.layers.0.mlp.gate_proj.weight").at(0));
  c.max_context = max_context;
  if (meta.contains("rope_theta")) c.rope_theta = std::stof(meta["rope_theta"].get<std::string>());
  if (meta.contains("rms_norm_eps")) c.norm_eps = std::stof(meta["rms_norm_eps"].get<std::string>());
  if (c.heads < 1 || c.kv_heads < 1 || c.dim % c.heads != 0 || c.heads % c.kv_heads != 0 || c.head_dim() % 2 != 0) {
    throw fail("head counts " + std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) +
               " do not fit dim " + std::to_string(c.dim));
  }
  auto w = std::make_shared<llama_weights>();
  w->config = c;
  const std::int64_t d = c.dim, hd = c.head_dim(), f = c.ffn_dim, v = c.vocab_size;
  w->embed = tensor("model.embed_tokens.weight", {v, d});
  for (std::int32_t l = 0; l < c.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    layer L;
    L.attn_norm = tensor(p + "input_layernorm.weight", {d});
    L.wq = tensor(p + "self_attn.q_proj.weight", {c.heads * hd, d});
    L.wk = tensor(p + "self_attn.k_proj.weight", {c.kv_heads * hd, d});
    L.wv = tensor(p + "self_attn.v_proj.weight", {c.kv_heads * hd, d});
    L.wo = tensor(p + "self_attn.o_proj.weight", {d, c.heads * hd});
    L.mlp_norm = tensor(p + "post_attention_layernorm.weight", {d});
    L.w_gate = tensor(p + "mlp.gate_proj.weight", {f, d});
    L.w_up = tensor(p + "mlp.up_proj.weight", {f, d});
    L.w_down = tensor(p + "mlp.down_proj.weight", {d, f});
    w->layers.push_back(std::move(L));
  }
  w->norm = tensor("model.norm.weight", {d});
  // Tied embeddings: no lm_head of its own.
  w->lm_head = h.contains("lm_head.weight") ? tensor("lm_head.weight", {v, d}) : w->embed;
  return w;
}

struct llama_model::workspace {
  std::vector<float> x, h, q, k, v, att, gate, up, logits, scores, probs, rope;
  std::vector<std::int32_t> order;
  std::vector<std::size_t> slots;  // KV slot of each context position of one request
};

llama_model::llama_model(std::shared_ptr<const llama_weights> weights, std::int32_t kv_pages, std::int32_t page_size)
    : weights_(std::move(weights)), kv_pages_(kv_pages), page_size_(page_size) {
  // One BLAS thread: the host streams are the parallelism, and a 2-core
  // machine has none to spare.
  openblas_set_num_threads(1);
  const auto& c = weights_->config;
  const std::size_t slots = static_cast<std::size_t>(kv_pages_) * static_cast<std::size_t>(page_size_) *
                            static_cast<std::size_t>(c.kv_heads) * static_cast<std::size_t>(c.head_dim());
  for (std::int32_t j = 0; j < c.head_dim() / 2; ++j) {
    inv_freq_.push_back(std::pow(c.rope_theta, -2.0f * static_cast<float>(j) / static_cast<float>(c.head_dim())));
  }
  k_cache_.assign(static_cast<std::size_t>(c.layers), std::vector<float>(slots));
  v_cache_.assign(static_cast<std::size_t>(c.layers), std::vector<float>(slots));
}

llama_model::~llama_model() = default;

engine::model_info llama_model::info() const {
  const auto& c = weights_->config;
  return {c.vocab_size, c.max_context, c.layers, 0};
}

void llama_model::bind(const engine::ubatch_io& io) {
  const auto& c = weights_->config;
  const auto slot = static_cast<std::size_t>(io.slot);
  if (workspaces_.size() <= slot) workspaces_.resize(slot + 1);
  auto w = std::make_unique<workspace>();
  const auto t = static_cast<std::size_t>(io.capacity_tokens);
  const auto hd = static_cast<std::size_t>(c.head_dim());
  w->x.resize(t * static_cast<std::size_t>(c.dim));
  w->h.resize(w->x.size());
  w->q.resize(t * static_cast<std::size_t>(c.heads) * hd);
  w->att.resize(w->q.size());
  w->k.resize(t * static_cast<std::size_t>(c.kv_heads) * hd);
  w->v.resize(w->k.size());
  w->gate.resize(t * static_cast<std::size_t>(c.ffn_dim));
  w->up.resize(w->gate.size());
  w->logits.resize(static_cast<std::size_t>(c.vocab_size));
  w->probs.resize(w->logits.size());
  w->order.resize(w->logits.size());
  w->scores.resize(static_cast<std::size_t>(c.max_context));
  w->slots.resize(static_cast<std::size_t>(c.max_context));
  w->rope.resize(t * hd);
  workspaces_[slot] = std::move(w);
}

void llama_model::enqueue_segment(std::int32_t, const engine::ubatch_io& io, std::int32_t, gpu::stream_ref s) {
  // Reads the slot's persistent buffers when it runs (so a captured graph
  // replays with the step's contents); real sizes come from io.counts.
  workspace* w = workspaces_.at(static_cast<std::size_t>(io.slot)).get();
  const engine::ubatch_io* p = &io;
  s.enqueue([this, p, w] { forward(*p, *w); });
}

void llama_model::forward(const engine::ubatch_io& io, workspace& w) {
  const auto& c = weights_->config;
  const std::int32_t T = io.counts[0];
  const std::int32_t R = io.counts[1];
  if (T == 0) return;
  const std::int32_t D = c.dim, hd = c.head_dim(), H = c.heads, KV = c.kv_heads, F = c.ffn_dim;
  const std::int32_t group = H / KV;
  const std::size_t kv_row = static_cast<std::size_t>(KV) * static_cast<std::size_t>(hd);
  const float inv_sqrt = 1.0f / std::sqrt(static_cast<float>(hd));

  for (std::int32_t t = 0; t < T; ++t) {
    const auto id = static_cast<std::size_t>(std::clamp(io.token_ids[t], 0, c.vocab_size - 1));
    std::copy_n(weights_->embed.begin() + static_cast<std::ptrdiff_t>(id * static_cast<std::size_t>(D)), D,
                w.x.begin() + static_cast<std::ptrdiff_t>(t) * D);
  }
  const auto kv_slot = [&](std::int32_t r, std::int32_t pos) {
    const std::int32_t page = io.block_table[r * io.block_stride + pos / page_size_];
    if (page < 0 || page >= kv_pages_) throw std::runtime_error("llama_model: position " + std::to_string(pos) + " has no KV page");
    return static_cast<std::size_t>(page) * static_cast<std::size_t>(page_size_) + static_cast<std::size_t>(pos % page_size_);
  };
  // Rotary angles once per token (shared by every head and layer).
  const std::int32_t half = hd / 2;
  for (std::int32_t t = 0; t < T; ++t) {
    float* cs = &w.rope[static_cast<std::size_t>(t) * static_cast<std::size_t>(hd)];
    for (std::int32_t j = 0; j < half; ++j) {
      const float a = static_cast<float>(io.positions[t]) * inv_freq_[static_cast<std::size_t>(j)];
      cs[j] = std::cos(a);
      cs[j + half] = std::sin(a);
    }
  }
  const auto rope = [&](float* vec, std::int32_t t) {
    const float* cs = &w.rope[static_cast<std::size_t>(t) * static_cast<std::size_t>(hd)];
    for (std::int32_t j = 0; j < half; ++j) {
      const float x1 = vec[j], x2 = vec[j + half];
      vec[j] = x1 * cs[j] - x2 * cs[j + half];
      vec[j + half] = x2 * cs[j] + x1 * cs[j + half];
    }
  };

  for (std::size_t l = 0; l < weights_->layers.size(); ++l) {
    const auto& L = weights_->layers[l];
    auto& kc = k_cache_[l];
    auto& vc = v_cache_[l];
    rms_norm(w.x.data(), L.attn_norm, w.h.data(), T, D, c.norm_eps);
    linear(w.h.data(), L.wq, w.q.data(), T, D, H * hd);
    linear(w.h.data(), L.wk, w.k.data(), T, D, KV * hd);
    linear(w.h.data(), L.wv, w.v.data(), T, D, KV * hd);
    // Rotary positions, then this step's keys and values into their pages
    // (all of them first: a prompt chunk attends to itself).
    for (std::int32_t r = 0; r < R; ++r) {
      for (std::int32_t t = io.query_start_loc[r]; t < io.query_start_loc[r + 1]; ++t) {
        const std::int32_t pos = io.positions[t];
        for (std::int32_t head = 0; head < H; ++head) rope(&w.q[(static_cast<std::size_t>(t) * H + head) * hd], t);
        for (std::int32_t head = 0; head < KV; ++head) rope(&w.k[(static_cast<std::size_t>(t) * KV + head) * hd], t);
        const std::size_t slot = kv_slot(r, pos);
        std::copy_n(&w.k[static_cast<std::size_t>(t) * kv_row], kv_row, &kc[slot * kv_row]);
        std::copy_n(&w.v[static_cast<std::size_t>(t) * kv_row], kv_row, &vc[slot * kv_row]);
      }
    }
    // Causal attention over the request's context, read through its pages
    // (the page lookups once per request, not per head).
    for (std::int32_t r = 0; r < R; ++r) {
      const std::int32_t context = io.seq_lens[r];
      for (std::int32_t j = 0; j < context; ++j) w.slots[static_cast<std::size_t>(j)] = kv_slot(r, j);
      for (std::int32_t t = io.query_start_loc[r]; t < io.query_start_loc[r + 1]; ++t) {
        const std::int32_t pos = io.positions[t];
        for (std::int32_t head = 0; head < H; ++head) {
          const float* q = &w.q[(static_cast<std::size_t>(t) * H + head) * hd];
          const std::size_t kvh = static_cast<std::size_t>(head / group) * static_cast<std::size_t>(hd);
          float max_score = -INFINITY;
          for (std::int32_t j = 0; j <= pos; ++j) {
            const float* k = &kc[w.slots[static_cast<std::size_t>(j)] * kv_row + kvh];
            float dot = 0;
            for (std::int32_t i = 0; i < hd; ++i) dot += q[i] * k[i];
            w.scores[static_cast<std::size_t>(j)] = dot * inv_sqrt;
            max_score = std::max(max_score, w.scores[static_cast<std::size_t>(j)]);
          }
          float* out = &w.att[(static_cast<std::size_t>(t) * H + head) * hd];
          std::fill_n(out, hd, 0.0f);
          float denom = 0;
          for (std::int32_t j = 0; j <= pos; ++j) {
            const float e = std::exp(w.scores[static_cast<std::size_t>(j)] - max_score);
            denom += e;
            const float* v = &vc[w.slots[static_cast<std::size_t>(j)] * kv_row + kvh];
            for (std::int32_t i = 0; i < hd; ++i) out[i] += e * v[i];
          }
          for (std::int32_t i = 0; i < hd; ++i) out[i] /= denom;
        }
      }
    }
    linear(w.att.data(), L.wo, w.h.data(), T, H * hd, D);
    for (std::size_t i = 0; i < static_cast<std::size_t>(T) * D; ++i) w.x[i] += w.h[i];
    rms_norm(w.x.data(), L.mlp_norm, w.h.data(), T, D, c.norm_eps);
    linear(w.h.data(), L.w_gate, w.gate.data(), T, D, F);
    linear(w.h.data(), L.w_up, w.up.data(), T, D, F);
    for (std::size_t i = 0; i < static_cast<std::size_t>(T) * F; ++i) {
      const float g = w.gate[i];
      w.gate[i] = g / (1.0f + std::exp(-g)) * w.up[i];  // SwiGLU
    }
    linear(w.gate.data(), L.w_down, w.h.data(), T, F, D);
    for (std::size_t i = 0; i < static_cast<std::size_t>(T) * D; ++i) w.x[i] += w.h[i];
  }

  // The LM head and sampling, for the rows that sample.
  const std::int32_t V = c.vocab_size;
  for (std::int32_t r = 0; r < R; ++r) {
    const std::int32_t row = io.sample_rows[r];
    if (row < 0) continue;
    rms_norm(&w.x[static_cast<std::size_t>(row) * D], weights_->norm, w.h.data(), 1, D, c.norm_eps);
    linear(w.h.data(), weights_->lm_head, w.logits.data(), 1, D, V);
    std::int32_t token = 0;
    const float temperature = io.temperature[r];
    if (temperature <= 0.0f) {
      token = static_cast<std::int32_t>(std::max_element(w.logits.begin(), w.logits.end()) - w.logits.begin());
    } else {
      // Softmax at the temperature, the smallest most-likely set reaching
      // top_p (ties by id), then one draw seeded by (seed, output index).
      const float top = *std::max_element(w.logits.begin(), w.logits.end());
      double total = 0;
      for (std::int32_t i = 0; i < V; ++i) {
        w.probs[static_cast<std::size_t>(i)] = std::exp((w.logits[static_cast<std::size_t>(i)] - top) / temperature);
        total += w.probs[static_cast<std::size_t>(i)];
      }
      std::iota(w.order.begin(), w.order.end(), 0);
      std::sort(w.order.begin(), w.order.end(), [&](std::int32_t a, std::int32_t b) {
        const float pa = w.probs[static_cast<std::size_t>(a)], pb = w.probs[static_cast<std::size_t>(b)];
        return pa != pb ? pa > pb : a < b;
      });
      double kept = 0;
      std::size_t n = 0;
      while (n < w.order.size()) {
        kept += w.probs[static_cast<std::size_t>(w.order[n++])] / total;
        if (kept >= io.top_p[r]) break;
      }
      double u = uniform(io.seed[r], static_cast<std::uint64_t>(io.sample_index[r])) * kept;
      token = w.order[n - 1];
      for (std::size_t i = 0; i < n; ++i) {
        u -= w.probs[static_cast<std::size_t>(w.order[i])] / total;
        if (u < 0) {
          token = w.order[i];
          break;
        }
      }
    }
    io.sampled[io.req_slots[r]] = token;
    if (io.logits != nullptr) {
      std::copy(w.logits.begin(), w.logits.end(), io.logits + static_cast<std::size_t>(io.req_slots[r]) * V);
    }
  }
}

}  // namespace cobatch::server
