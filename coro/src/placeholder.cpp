// Removed once the layer has real sources.
namespace cobatch::coro::detail { int placeholder_symbol = 0; }
