// Point-to-point calls need an open group: a send without a group_guard is a
// compile error, not a deadlock at run time.
// expect: (no matching function for call to [^ ]*cobatch::gpu::communicator::send\(float\*&, int, cobatch::gpu::data_type, int, cobatch::gpu::stream_ref&\) const|too few arguments to function call, expected 6, have 5)
#include "cobatch/gpu/communicator.hpp"

void exchange(const cobatch::gpu::communicator& comm, cobatch::gpu::stream_ref s, float* x) {
#ifdef COBATCH_COMPILE_FAIL
  comm.send(x, 1, cobatch::gpu::data_type::f32, 1, s);
#else
  cobatch::gpu::group_guard group(comm);
  comm.send(group, x, 1, cobatch::gpu::data_type::f32, 1, s);
#endif
}

int main() {}
