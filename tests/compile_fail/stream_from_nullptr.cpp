// An owning stream always owns a stream: building one from nullptr is a
// compile error (a stream used without owning it is a stream_ref).
#include "cobatch/gpu/stream.hpp"

int main() {
  cobatch::gpu::stream s(nullptr);
  (void)s;
}
