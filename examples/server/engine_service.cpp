#include "engine_service.hpp"

#include <asio/experimental/as_tuple.hpp>
#include <asio/use_awaitable.hpp>

namespace cobatch::server {

generation::generation(asio::any_io_executor http_executor) : wake_(std::move(http_executor)) {}

asio::awaitable<void> generation::wait() {
  if (!pending_.empty() || finished()) co_return;
  // deliver() cancels the timer: a wake-up, not an error.
  wake_.expires_at(asio::steady_timer::time_point::max());
  co_await wake_.async_wait(asio::experimental::as_tuple(asio::use_awaitable));
}

void generation::deliver(std::span<const std::int32_t> tokens, generation_end end, std::string error) {
  pending_.insert(pending_.end(), tokens.begin(), tokens.end());
  if (!tokens.empty()) admitted_ = true;
  if (end != generation_end::running && end_ == generation_end::running) {
    end_ = end;
    error_ = std::move(error);
  }
  wake_.cancel();
}

}  // namespace cobatch::server
