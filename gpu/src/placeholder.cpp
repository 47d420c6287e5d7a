namespace cobatch::gpu::detail { int placeholder_symbol = 0; }
