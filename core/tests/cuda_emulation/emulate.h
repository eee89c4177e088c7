// A CPU stand-in for the little of CUDA that `src/nn/cuda/rows.cu` uses, so that its kernels run
// (slowly, one OS thread per CUDA thread) on a machine without a GPU: thread and block indices,
// `__shared__` memory, `__syncthreads` and the launch itself. Blocks run one after another, so a
// kernel's `__shared__` arrays (emulated as statics) belong to one block at a time. A thread that
// returns early leaves the block's barrier, as an exited thread does on a GPU. Dev and test use
// only (`tests/cuda_kernels_on_cpu.rs`); timing and memory-model effects are not emulated.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

struct dim3 {
  unsigned int x, y, z;
  dim3(unsigned int a = 1, unsigned int b = 1, unsigned int c = 1) : x(a), y(b), z(c) {}
};

namespace rb_emu {
inline thread_local dim3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;
inline thread_local std::barrier<> *block_barrier = nullptr;
}  // namespace rb_emu

#define threadIdx rb_emu::thread_idx
#define blockIdx rb_emu::block_idx
#define blockDim rb_emu::block_dim
#define gridDim rb_emu::grid_dim
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

inline void __syncthreads() { rb_emu::block_barrier->arrive_and_wait(); }

inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

// Runs `kernel()` (a lambda calling the kernel with its arguments) over `grid` x `block`.
template <class F>
void rb_launch(dim3 grid, dim3 block, F kernel) {
  rb_emu::grid_dim = grid;
  rb_emu::block_dim = block;
  const unsigned int threads = block.x * block.y * block.z;
  std::vector<dim3> blocks;
  for (unsigned int z = 0; z < grid.z; ++z)
    for (unsigned int y = 0; y < grid.y; ++y)
      for (unsigned int x = 0; x < grid.x; ++x) blocks.emplace_back(x, y, z);
  std::vector<std::unique_ptr<std::barrier<>>> barriers;
  for (size_t i = 0; i < blocks.size(); ++i)
    barriers.push_back(std::make_unique<std::barrier<>>(threads));
  // Every thread finishes block i before any starts block i + 1.
  std::barrier<> between(threads);
  std::vector<std::thread> pool;
  for (unsigned int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      rb_emu::thread_idx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
      for (size_t i = 0; i < blocks.size(); ++i) {
        rb_emu::block_idx = blocks[i];
        rb_emu::block_barrier = barriers[i].get();
        kernel();
        barriers[i]->arrive_and_drop();
        between.arrive_and_wait();
      }
    });
  }
  for (auto &th : pool) th.join();
}
