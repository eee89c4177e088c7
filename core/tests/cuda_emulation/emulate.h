// A CPU stand-in for the part of CUDA that `src/nn/cuda/kernels.cu` uses, so that its kernels run
// (slowly, one OS thread per CUDA thread) on a machine without a GPU: thread and block indices,
// `__shared__` memory, `__syncthreads`, warp shuffles, the vector types and intrinsics the kernels
// call, and the launch itself. Blocks run one after another, so a kernel's `__shared__` arrays
// (emulated as statics) belong to one block at a time. A thread that returns early leaves its
// block's and its warp's barriers, as an exited thread does on a GPU. The `_rn` intrinsics are
// plain IEEE operations: build with -ffp-contract=off so that nothing is fused. Dev and test use
// only (`tests/cuda_kernels_on_cpu.rs`); timing and memory-model effects are not emulated.
#pragma once

#include <algorithm>
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
// The calling thread's warp: its barrier and the slots a shuffle exchanges through.
struct Warp {
  explicit Warp(unsigned int lanes) : barrier(lanes) {}
  std::barrier<> barrier;
  uint64_t slot[32] = {};
};
inline thread_local Warp *warp = nullptr;
inline thread_local unsigned int lane = 0;
}  // namespace rb_emu

#define threadIdx rb_emu::thread_idx
#define blockIdx rb_emu::block_idx
#define blockDim rb_emu::block_dim
#define gridDim rb_emu::grid_dim
#define __global__
#define __launch_bounds__(...)
#define __device__
#define __forceinline__ inline
#define __shared__ static

inline void __syncthreads() { rb_emu::block_barrier->arrive_and_wait(); }

// The value `v` of lane `lane ^ offset` of the calling warp (every lane of the warp calls it).
template <class T>
T __shfl_xor_sync(unsigned int, T v, int offset) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "a shuffled value fits 64 bits");
  rb_emu::Warp &w = *rb_emu::warp;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof v);
  w.slot[rb_emu::lane] = bits;
  w.barrier.arrive_and_wait();
  T r;
  uint64_t other = w.slot[(rb_emu::lane ^ (unsigned int)offset) & 31u];
  std::memcpy(&r, &other, sizeof r);
  w.barrier.arrive_and_wait();
  return r;
}

struct uint2 {
  unsigned int x, y;
};
struct uint4 {
  unsigned int x, y, z, w;
};
inline uint2 make_uint2(unsigned int x, unsigned int y) { return {x, y}; }
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) {
  return {x, y, z, w};
}
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
  return (unsigned int)(((uint64_t)a * b) >> 32);
}
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
using std::isfinite;
using std::max;
using std::min;

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
  std::vector<std::vector<std::unique_ptr<rb_emu::Warp>>> warps(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    barriers.push_back(std::make_unique<std::barrier<>>(threads));
    for (unsigned int w = 0; w * 32 < threads; ++w)
      warps[i].push_back(std::make_unique<rb_emu::Warp>(std::min(32u, threads - w * 32)));
  }
  // Every thread finishes block i before any starts block i + 1.
  std::barrier<> between(threads);
  std::vector<std::thread> pool;
  for (unsigned int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      rb_emu::thread_idx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
      rb_emu::lane = t % 32;
      for (size_t i = 0; i < blocks.size(); ++i) {
        rb_emu::block_idx = blocks[i];
        rb_emu::block_barrier = barriers[i].get();
        rb_emu::warp = warps[i][t / 32].get();
        kernel();
        rb_emu::warp->barrier.arrive_and_drop();
        barriers[i]->arrive_and_drop();
        between.arrive_and_wait();
      }
    });
  }
  for (auto &th : pool) th.join();
}
