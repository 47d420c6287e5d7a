// Dispatch modes and the keys that name a captured graph.
//
// A key is looked up several times per step (exact full, relaxed full,
// piecewise, then the cache), so it is one 64-bit word: equality is one
// compare and the hash is a short integer mix. The fields are range-checked
// when a key is made, never when it is compared.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string_view>

namespace cobatch::engine {
namespace detail {
// Out of line and cold, so the inline factories stay a few compares.
[[noreturn]] void reject_mixed_key(std::uint32_t tokens, std::uint32_t requests);
[[noreturn]] void reject_uniform_key(std::uint32_t requests, std::uint32_t query_len);
[[noreturn]] void reject_relaxed_key(std::uint32_t tokens);
}  // namespace detail

/// How a step runs. `eager` launches kernels one by one; `piecewise` replays
/// graphs captured between the layers that cannot be captured (attention of
/// mixed batches); `full` replays one graph for the whole forward pass.
enum class dispatch_mode : std::uint8_t { eager = 0, piecewise = 1, full = 2 };

inline constexpr std::size_t dispatch_mode_count = 3;

/// "eager", "piecewise", "full"; "unknown" for a value outside the enum.
std::string_view to_string(dispatch_mode mode) noexcept;

/// Throws engine_error(errc::unknown_mode) naming the value when `mode` is not
/// an enumerator: a mode read from a file or cast from an integer is checked here.
void validate(dispatch_mode mode);

/// A small set of modes, one bit each; what a policy may choose from.
class mode_set {
 public:
  constexpr mode_set() noexcept = default;
  constexpr mode_set(std::initializer_list<dispatch_mode> modes) noexcept {
    for (auto m : modes) insert(m);
  }
  constexpr void insert(dispatch_mode m) noexcept { bits_ |= bit(m); }
  constexpr void erase(dispatch_mode m) noexcept { bits_ &= static_cast<std::uint8_t>(~bit(m)); }
  constexpr bool contains(dispatch_mode m) const noexcept { return (bits_ & bit(m)) != 0; }
  constexpr bool empty() const noexcept { return bits_ == 0; }
  constexpr int size() const noexcept {
    return ((bits_ >> 0) & 1) + ((bits_ >> 1) & 1) + ((bits_ >> 2) & 1);
  }
  friend constexpr bool operator==(mode_set, mode_set) noexcept = default;

 private:
  static constexpr std::uint8_t bit(dispatch_mode m) noexcept {
    return static_cast<std::uint8_t>(1u << static_cast<unsigned>(m));
  }
  std::uint8_t bits_ = 0;
};

/// Step properties that change what a captured graph contains, so a graph
/// captured without them cannot replay a step that has them. Flags; combine
/// with `|`. The custom bits are for the model runner's own discriminators.
enum class step_feature : std::uint8_t {
  none = 0,
  lora = 1u << 0,           ///< LoRA adapters are active (extra kernels in every layer)
  multimodal = 1u << 1,     ///< encoder outputs are merged into the input embeddings
  prompt_embeds = 1u << 2,  ///< inputs arrive as embeddings, not token ids
  custom0 = 1u << 4,
  custom1 = 1u << 5,
  custom2 = 1u << 6,
  custom3 = 1u << 7,
};

constexpr step_feature operator|(step_feature a, step_feature b) noexcept {
  return static_cast<step_feature>(static_cast<std::uint8_t>(a) | static_cast<std::uint8_t>(b));
}
constexpr step_feature operator&(step_feature a, step_feature b) noexcept {
  return static_cast<step_feature>(static_cast<std::uint8_t>(a) & static_cast<std::uint8_t>(b));
}
constexpr bool has(step_feature set, step_feature f) noexcept {
  return (set & f) != step_feature::none;
}

/// The shape of a step as far as graph capture is concerned.
///
/// Layout of the word (low to high): tokens 24 bits, requests 20 bits,
/// uniform query length 10 bits, features 8 bits, 2 bits left zero so that a
/// (mode, key) pair packs into one word as well (graph_key).
///
/// `requests == 0` marks a relaxed key: any mix of requests with that many
/// tokens. `uniform_query_len == 0` marks a mixed batch; a value q > 0 says
/// every request has exactly q query tokens (q == 1: plain decode; q > 1:
/// speculative decode), which lets a full graph bake in the attention layout.
class dispatch_key {
 public:
  static constexpr std::uint32_t max_tokens = (1u << 24) - 1;
  static constexpr std::uint32_t max_requests = (1u << 20) - 1;
  static constexpr std::uint32_t max_query_len = (1u << 10) - 1;

  /// A batch of `requests` requests with `tokens` tokens in all, query lengths
  /// not all equal (or not known to be). Throws engine_error: empty_batch when
  /// either count is zero, length_mismatch when requests exceed tokens,
  /// overflow when a count does not fit its field.
  static dispatch_key mixed(std::uint32_t tokens, std::uint32_t requests,
                            step_feature features = step_feature::none) {
    if (tokens == 0 || requests == 0 || requests > tokens || tokens > max_tokens || requests > max_requests)
      [[unlikely]] detail::reject_mixed_key(tokens, requests);
    return dispatch_key(pack(tokens, requests, 0, features));
  }

  /// `requests` requests of exactly `query_len` query tokens each; same
  /// errors as mixed(), and overflow when requests * query_len exceeds max_tokens.
  static dispatch_key uniform_decode(std::uint32_t requests, std::uint32_t query_len,
                                     step_feature features = step_feature::none) {
    const std::uint64_t tokens = std::uint64_t{requests} * query_len;
    if (requests == 0 || query_len == 0 || requests > max_requests || query_len > max_query_len ||
        tokens > max_tokens) [[unlikely]]
      detail::reject_uniform_key(requests, query_len);
    return dispatch_key(pack(static_cast<std::uint32_t>(tokens), requests, query_len, features));
  }

  /// A relaxed key: `tokens` tokens in any mix of requests (what piecewise
  /// graphs and full graphs for mixed batches are captured for).
  static dispatch_key for_tokens(std::uint32_t tokens, step_feature features = step_feature::none) {
    if (tokens == 0 || tokens > max_tokens) [[unlikely]] detail::reject_relaxed_key(tokens);
    return dispatch_key(pack(tokens, 0, 0, features));
  }

  /// Rebuilds a key from its word; checks nothing (the word came from a key).
  static constexpr dispatch_key from_bits(std::uint64_t bits) noexcept { return dispatch_key(bits); }

  constexpr std::uint32_t tokens() const noexcept { return static_cast<std::uint32_t>(bits_ & max_tokens); }
  constexpr std::uint32_t requests() const noexcept {
    return static_cast<std::uint32_t>((bits_ >> requests_shift) & max_requests);
  }
  constexpr std::uint32_t uniform_query_len() const noexcept {
    return static_cast<std::uint32_t>((bits_ >> query_shift) & max_query_len);
  }
  constexpr bool is_uniform_decode() const noexcept { return uniform_query_len() != 0; }
  constexpr bool is_relaxed() const noexcept { return requests() == 0; }
  constexpr step_feature features() const noexcept {
    return static_cast<step_feature>((bits_ >> features_shift) & 0xffu);
  }

  /// The same token count and features, request count and uniformity dropped.
  /// Uniformity goes too, as in vLLM: a graph captured for any mix of requests
  /// also serves a uniform batch of the same size.
  constexpr dispatch_key relaxed() const noexcept {
    return dispatch_key(bits_ & (std::uint64_t{max_tokens} | (std::uint64_t{0xff} << features_shift)));
  }

  /// This step padded to `rung` tokens. A mixed batch keeps its request
  /// count (padding tokens belong to no new request); a uniform batch gains
  /// whole dummy requests, and when it cannot stay uniform (`rung` is not a
  /// multiple of its query length, or the padded request count would not fit
  /// the request field, as for a plain decode padded past max_requests) the
  /// relaxed key is returned: a graph for any mix of `rung` tokens serves it.
  /// A relaxed key stays relaxed. Precondition: tokens() <= rung <= max_tokens
  /// (a rung of a capture ladder), so only representability is decided here:
  /// this is the dispatch hot path.
  constexpr dispatch_key padded_to(std::uint32_t rung) const noexcept {
    const std::uint64_t rest = bits_ & ~std::uint64_t{max_tokens};
    const std::uint32_t q = uniform_query_len();
    if (q == 0) return dispatch_key(rest | rung);
    if (rung % q != 0 || rung / q > max_requests) return dispatch_key(pack(rung, 0, 0, features()));
    return dispatch_key(pack(rung, rung / q, q, features()));
  }

  constexpr std::uint64_t bits() const noexcept { return bits_; }

  /// A full-avalanche mix of the word (MurmurHash3's finalizer): nearby sizes
  /// differ in low bits only, and open addressing needs every bit mixed.
  constexpr std::uint64_t hash() const noexcept { return mix(bits_); }

  static constexpr std::uint64_t mix(std::uint64_t k) noexcept {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
  }

  friend constexpr bool operator==(dispatch_key, dispatch_key) noexcept = default;

 private:
  friend class graph_key;
  static constexpr unsigned requests_shift = 24;
  static constexpr unsigned query_shift = 44;
  static constexpr unsigned features_shift = 54;
  static constexpr unsigned mode_shift = 62;

  constexpr explicit dispatch_key(std::uint64_t bits) noexcept : bits_(bits) {}
  static constexpr std::uint64_t pack(std::uint32_t tokens, std::uint32_t requests, std::uint32_t query_len,
                                      step_feature features) noexcept {
    return std::uint64_t{tokens} | (std::uint64_t{requests} << requests_shift) |
           (std::uint64_t{query_len} << query_shift) |
           (std::uint64_t{static_cast<std::uint8_t>(features)} << features_shift);
  }

  std::uint64_t bits_ = 0;
};

/// A (mode, key) pair in one word: what a graph cache is indexed by. A full
/// graph and a piecewise graph for the same shape are different graphs.
class graph_key {
 public:
  constexpr graph_key(dispatch_mode mode, dispatch_key key) noexcept
      : bits_(key.bits() | (std::uint64_t{static_cast<std::uint8_t>(mode)} << dispatch_key::mode_shift)) {}

  /// Rebuilds a graph key from its word; checks nothing (the word came from a key).
  static constexpr graph_key from_bits(std::uint64_t bits) noexcept { return graph_key(bits); }

  constexpr dispatch_mode mode() const noexcept {
    return static_cast<dispatch_mode>(bits_ >> dispatch_key::mode_shift);
  }
  constexpr dispatch_key key() const noexcept {
    return dispatch_key(bits_ & ~(std::uint64_t{3} << dispatch_key::mode_shift));
  }
  constexpr std::uint64_t bits() const noexcept { return bits_; }
  constexpr std::uint64_t hash() const noexcept { return dispatch_key::mix(bits_); }

  friend constexpr bool operator==(graph_key, graph_key) noexcept = default;

 private:
  constexpr explicit graph_key(std::uint64_t bits) noexcept : bits_(bits) {}
  std::uint64_t bits_;
};

}  // namespace cobatch::engine

template <>
struct std::hash<cobatch::engine::dispatch_key> {
  std::size_t operator()(cobatch::engine::dispatch_key k) const noexcept { return k.hash(); }
};
template <>
struct std::hash<cobatch::engine::graph_key> {
  std::size_t operator()(cobatch::engine::graph_key k) const noexcept { return k.hash(); }
};
