// recblocks' CUDA kernels (f32), compiled to PTX by core's build script when the `cuda` feature is
// on, and loaded once per device by `nn::cuda`. Each kernel is the device form of a CPU op in
// `core/src/nn`, computing the same function; the tests in `nn/cuda/tests.rs` compare the two on
// the same inputs.
//
// Launch shapes: the row kernels take one warp per row (blocks of 4 warps) where rows are short
// (layer norm, attention softmax) and one block of 256 threads per row where rows are catalogs
// (cross-entropy). Reductions run in a fixed order, so results do not depend on timing.

#include <stdint.h>

#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
  return v;
}

// Sum over a block of 256 threads (8 warps); every thread gets the result. `scratch` holds 8.
__device__ __forceinline__ float block_sum(float v, float *scratch) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = lane < 8 ? scratch[lane] : 0.0f;
  return warp_sum(t);
}

__device__ __forceinline__ float block_max(float v, float *scratch) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = lane < 8 ? scratch[lane] : -INFINITY;
  return warp_max(t);
}

// ---------------------------------------------------------------------------------------------
// Dropout: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011).
// Block b is the generator at counter (b low, b high, 0, 0) under the call's 64-bit key as
// (low, high); draw d of a block is half d % 2 (low half first) of word d / 2. Element
// i = 128·g + 16·d + j takes draw d of block 16·g + j; it is kept where draw < threshold, then
// multiplied by `scale`. nn/philox.rs is the CPU form of the same function.

__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint2 k) {
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      k.x += 0x9E3779B9u;
      k.y += 0xBB67AE85u;
    }
    unsigned int hi0 = __umulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
    unsigned int hi1 = __umulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
    c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
  }
  return c;
}

// A mask's key: the launch's (key_lo, key_hi), or, where `key_slot` is set, the 64-bit key stored
// there (a captured training step reads each replay's keys from device memory: nn/capture.rs).
__device__ __forceinline__ uint2 mask_key(unsigned int key_lo, unsigned int key_hi,
                                          const unsigned long long *key_slot) {
  if (key_slot) {
    unsigned long long k = *key_slot;
    return make_uint2((unsigned int)k, (unsigned int)(k >> 32));
  }
  return make_uint2(key_lo, key_hi);
}

// out[i] = x[i] * (draw_i < threshold ? scale : 0), plus r[i] where r is set (rounded as the two
// ops are, a product then a sum, never fused); one thread per Philox block (8 elements, 16 floats
// apart: the threads of a warp write 16 consecutive floats of two groups per draw).
__device__ __forceinline__ void dropout_block(const float *x, const float *r, float *out,
                                              unsigned long long n, uint2 key,
                                              unsigned int threshold, float scale) {
  unsigned long long b = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  unsigned long long base = (b >> 4) * 128 + (b & 15);
  if (base >= n) return;
  uint4 w4 = philox4x32_10(make_uint4((unsigned int)b, (unsigned int)(b >> 32), 0u, 0u), key);
  unsigned int words[4] = {w4.x, w4.y, w4.z, w4.w};
#pragma unroll
  for (int d = 0; d < 8; ++d) {
    unsigned long long i = base + 16 * d;
    if (i < n) {
      unsigned int w = words[d >> 1];
      unsigned int draw = (d & 1) ? (w >> 16) : (w & 0xffffu);
      float m = draw < threshold ? scale : 0.0f;
      out[i] = r ? __fadd_rn(__fmul_rn(x[i], m), r[i]) : x[i] * m;
    }
  }
}

// A dropout: out = x · mask.
extern "C" __global__ void rb_dropout(const float *x, float *out, unsigned long long n,
                                      unsigned int key_lo, unsigned int key_hi,
                                      const unsigned long long *key_slot, unsigned int threshold,
                                      float scale) {
  dropout_block(x, nullptr, out, n, mask_key(key_lo, key_hi, key_slot), threshold, scale);
}

// A dropout and a residual sum in one pass: out = x · mask + r (the same mask as rb_dropout's
// under the same key).
extern "C" __global__ void rb_dropout_add(const float *x, const float *r, float *out,
                                          unsigned long long n, unsigned int key_lo,
                                          unsigned int key_hi, const unsigned long long *key_slot,
                                          unsigned int threshold, float scale) {
  dropout_block(x, r, out, n, mask_key(key_lo, key_hi, key_slot), threshold, scale);
}

// ---------------------------------------------------------------------------------------------
// Layer norm over rows of d: y = (x - mean) / sqrt(var + eps) * w + b (biased variance).

__device__ __forceinline__ void row_stats(const float *xr, int d, float eps, int lane, float *mean,
                                          float *rstd) {
  float s = 0.0f;
  for (int j = lane; j < d; j += 32) s += xr[j];
  float mu = warp_sum(s) / (float)d;
  float v = 0.0f;
  for (int j = lane; j < d; j += 32) {
    float c = xr[j] - mu;
    v += c * c;
  }
  float var = warp_sum(v) / (float)d;
  *mean = mu;
  *rstd = 1.0f / sqrtf(var + eps);
}

extern "C" __global__ void rb_layer_norm_fwd(const float *x, const float *w, const float *b,
                                             float *y, int rows, int d, float eps) {
  int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const float *xr = x + (size_t)row * d;
  float *yr = y + (size_t)row * d;
  float mu, rs;
  row_stats(xr, d, eps, lane, &mu, &rs);
  for (int j = lane; j < d; j += 32) yr[j] = (xr[j] - mu) * rs * w[j] + b[j];
}

// dx = (dŷ - mean(dŷ) - x̂·mean(dŷ·x̂)) · rstd with dŷ = dy·w; also writes each row's (mean, rstd)
// for the parameter gradients.
extern "C" __global__ void rb_layer_norm_bwd_dx(const float *x, const float *w, const float *dy,
                                                float *dx, float *stats, int rows, int d,
                                                float eps) {
  int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const float *xr = x + (size_t)row * d;
  const float *gr = dy + (size_t)row * d;
  float *dr = dx + (size_t)row * d;
  float mu, rs;
  row_stats(xr, d, eps, lane, &mu, &rs);
  float a = 0.0f, c = 0.0f;
  for (int j = lane; j < d; j += 32) {
    float g = gr[j] * w[j];
    a += g;
    c += g * (xr[j] - mu) * rs;
  }
  a = warp_sum(a) / (float)d;
  c = warp_sum(c) / (float)d;
  for (int j = lane; j < d; j += 32) {
    float g = gr[j] * w[j];
    float xh = (xr[j] - mu) * rs;
    dr[j] = (g - a - xh * c) * rs;
  }
  if (lane == 0) {
    stats[2 * row] = mu;
    stats[2 * row + 1] = rs;
  }
}

// Partial column sums of dy·x̂ (weight) and dy (bias) over chunks of `chunk` rows: block
// (32 columns × 8 row lanes), grid (column tiles, chunks); partials [chunks, 2, d].
extern "C" __global__ void rb_layer_norm_bwd_params(const float *x, const float *dy,
                                                    const float *stats, float *partials, int rows,
                                                    int d, int chunk) {
  __shared__ float sw[8][33];
  __shared__ float sb[8][33];
  int col = blockIdx.x * 32 + threadIdx.x;
  int start = blockIdx.y * chunk;
  int end = min(rows, start + chunk);
  float aw = 0.0f, ab = 0.0f;
  if (col < d) {
    for (int r = start + threadIdx.y; r < end; r += 8) {
      float g = dy[(size_t)r * d + col];
      float xh = (x[(size_t)r * d + col] - stats[2 * r]) * stats[2 * r + 1];
      aw += g * xh;
      ab += g;
    }
  }
  sw[threadIdx.y][threadIdx.x] = aw;
  sb[threadIdx.y][threadIdx.x] = ab;
  __syncthreads();
  if (threadIdx.y == 0 && col < d) {
    float tw = 0.0f, tb = 0.0f;
    for (int k = 0; k < 8; ++k) {
      tw += sw[k][threadIdx.x];
      tb += sb[k][threadIdx.x];
    }
    partials[((size_t)blockIdx.y * 2) * d + col] = tw;
    partials[((size_t)blockIdx.y * 2 + 1) * d + col] = tb;
  }
}

// out[j] = Σ_c partials[c, j] over `chunks` rows of width `width` (in order).
extern "C" __global__ void rb_sum_partials(const float *partials, float *out, int chunks,
                                           int width) {
  int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= width) return;
  float s = 0.0f;
  for (int c = 0; c < chunks; ++c) s += partials[(size_t)c * width + j];
  out[j] = s;
}

// ---------------------------------------------------------------------------------------------
// Softmax over rows of n (attention weights): one warp per row.

extern "C" __global__ void rb_softmax_fwd(const float *x, float *y, int rows, int n) {
  int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const float *xr = x + (size_t)row * n;
  float *yr = y + (size_t)row * n;
  float mx = -INFINITY;
  for (int j = lane; j < n; j += 32) mx = fmaxf(mx, xr[j]);
  mx = warp_max(mx);
  float s = 0.0f;
  for (int j = lane; j < n; j += 32) s += expf(xr[j] - mx);
  s = warp_sum(s);
  for (int j = lane; j < n; j += 32) yr[j] = expf(xr[j] - mx) / s;
}

// dx = y·(dy − Σ dy·y)
extern "C" __global__ void rb_softmax_bwd(const float *y, const float *dy, float *dx, int rows,
                                          int n) {
  int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const float *yr = y + (size_t)row * n;
  const float *gr = dy + (size_t)row * n;
  float *dr = dx + (size_t)row * n;
  float s = 0.0f;
  for (int j = lane; j < n; j += 32) s += gr[j] * yr[j];
  s = warp_sum(s);
  for (int j = lane; j < n; j += 32) dr[j] = yr[j] * (gr[j] - s);
}

// ---------------------------------------------------------------------------------------------
// Softmax cross-entropy over catalog rows with class 0 ignored: one block of 256 per row.

__device__ __forceinline__ float row_log_sum_exp(const float *xr, int c, float *scratch) {
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < c; j += blockDim.x) mx = fmaxf(mx, xr[j]);
  mx = block_max(mx, scratch);
  float s = 0.0f;
  for (int j = threadIdx.x; j < c; j += blockDim.x) s += expf(xr[j] - mx);
  s = block_sum(s, scratch);
  return mx + logf(s);
}

// ce[row] = lse(x_row) − x[row, t] (0 where t = 0).
extern "C" __global__ void rb_softmax_ce_fwd(const float *x, const unsigned int *t, float *ce,
                                             int rows, int c) {
  __shared__ float scratch[8];
  int row = blockIdx.x;
  if (row >= rows) return;
  unsigned int tr = t[row];
  if (tr == 0u) {
    if (threadIdx.x == 0) ce[row] = 0.0f;
    return;
  }
  if (tr >= (unsigned int)c) {  // an id outside the catalog: NaN, never a read out of bounds
    if (threadIdx.x == 0) ce[row] = NAN;
    return;
  }
  const float *xr = x + (size_t)row * c;
  float lse = row_log_sum_exp(xr, c, scratch);
  if (threadIdx.x == 0) ce[row] = lse - xr[tr];
}

// One row's gradient of a weighted softmax cross-entropy: dr[j] = g·(softmax_j − [j = t]), zeros
// where t = 0 and NaN where t ≥ c (an id outside the catalog). Returns whether the row has a
// target, and then its log-sum-exp in *lse. Every thread of the block calls it.
__device__ __forceinline__ bool ce_grad_row(const float *xr, float *dr, unsigned int tr, int c,
                                            float g, float *scratch, float *lse) {
  if (tr == 0u || tr >= (unsigned int)c) {
    float fill = tr == 0u ? 0.0f : NAN;
    for (int j = threadIdx.x; j < c; j += blockDim.x) dr[j] = fill;
    return false;
  }
  *lse = row_log_sum_exp(xr, c, scratch);
  for (int j = threadIdx.x; j < c; j += blockDim.x) {
    float v = g * expf(xr[j] - *lse);
    dr[j] = (j == (int)tr) ? v - g : v;
  }
  return true;
}

// dx[row, j] = g[row]·(softmax_j − [j = t]) (0 where t = 0).
extern "C" __global__ void rb_softmax_ce_bwd(const float *x, const unsigned int *t, const float *g,
                                             float *dx, int rows, int c) {
  __shared__ float scratch[8];
  int row = blockIdx.x;
  if (row >= rows) return;
  float lse;
  ce_grad_row(x + (size_t)row * c, dx + (size_t)row * c, t[row], c, g[row], scratch, &lse);
}

// ---------------------------------------------------------------------------------------------
// Adam (torch.optim.Adam without weight decay), the operations of the host's CPU pass in order,
// over up to ADAM_TENSORS parameters in one launch (nn/cuda/mod.rs `adam_step`, whose
// `AdamTable` and `AdamCoefficients` mirror these structs field for field). Block b updates
// elements [(b − first_block[t])·blockDim, …) of parameter t, where first_block[t] ≤ b <
// first_block[t + 1]. The coefficients come by value, or from device memory where `k_slot` is
// set (a captured step reads each replay's step coefficients there: nn/capture.rs). Where `guard`
// is set, nothing is updated unless the value there (the step's loss) is finite.

#define ADAM_TENSORS 48

struct AdamTable {
  float *p[ADAM_TENSORS];
  const float *g[ADAM_TENSORS];
  float *m[ADAM_TENSORS];
  float *v[ADAM_TENSORS];
  unsigned int n[ADAM_TENSORS];
  unsigned int first_block[ADAM_TENSORS + 1];
  int count;
};

struct AdamCoefficients {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, inv_bias1, inv_bias2, eps, lr;
};

extern "C" __global__ void rb_adam_step(const AdamTable table, AdamCoefficients k,
                                        const AdamCoefficients *k_slot, const float *guard) {
  if (guard && !isfinite(*guard)) return;
  unsigned int blk = blockIdx.x;
  int lo = 0, hi = table.count - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) >> 1;
    if (table.first_block[mid] <= blk) lo = mid;
    else hi = mid - 1;
  }
  int t = lo;
  unsigned long long i = (unsigned long long)(blk - table.first_block[t]) * blockDim.x + threadIdx.x;
  if (i >= table.n[t]) return;
  if (k_slot) k = *k_slot;
  float *p = table.p[t], *m = table.m[t], *v = table.v[t];
  float gi = table.g[t][i];
  float mi = __fadd_rn(__fmul_rn(m[i], k.beta1), __fmul_rn(gi, k.one_minus_beta1));
  float vi = __fadd_rn(__fmul_rn(v[i], k.beta2), __fmul_rn(__fmul_rn(gi, gi), k.one_minus_beta2));
  m[i] = mi;
  v[i] = vi;
  float denom = __fadd_rn(sqrtf(__fmul_rn(vi, k.inv_bias2)), k.eps);
  float update = __fdiv_rn(__fmul_rn(mi, k.inv_bias1), denom);
  p[i] = __fsub_rn(p[i], __fmul_rn(update, k.lr));
}

// ---------------------------------------------------------------------------------------------
// The catalog softmax loss's row pass (nn/catalog_softmax.rs, chunked): for a chunk's logits z
// [rows, c], targets t and weights w, writes each row's weighted loss (lse − z[t])·w into
// `losses` and w·(softmax − onehot) into dz (zeros and loss 0 where t = 0; NaN where t ≥ c).

extern "C" __global__ void rb_catalog_rows(const float *z, const unsigned int *t, const float *w,
                                           float *dz, float *losses, int rows, int c) {
  __shared__ float scratch[8];
  int row = blockIdx.x;
  if (row >= rows) return;
  unsigned int tr = t[row];
  const float *zr = z + (size_t)row * c;
  float wr = w[row], lse;
  bool target = ce_grad_row(zr, dz + (size_t)row * c, tr, c, wr, scratch, &lse);
  if (threadIdx.x == 0) losses[row] = target ? (lse - zr[tr]) * wr : (tr == 0u ? 0.0f : NAN);
}

// The same row pass for long rows, in two launches over segments of `seg` logits, a block of
// 256 threads per (row, segment): grid (rows, segments). One block per row leaves most of a GPU
// idle where a chunk has few rows (a chunk of a 500k-item catalog holds about 120) and reads each
// row three times; here every segment has a block and each logit is read twice.
//
// rb_catalog_row_parts: per (row, segment), the segment's max m and Σ exp(z − m) (an online
// softmax per thread, then over the block) into parts[(row·segments + segment)·2 + {0, 1}];
// rows without a target (t = 0 or t ≥ c) write nothing.
extern "C" __global__ void rb_catalog_row_parts(const float *z, const unsigned int *t,
                                                float *parts, int rows, int c, int seg) {
  __shared__ float scratch[8];
  int row = blockIdx.x, part = blockIdx.y;
  if (row >= rows) return;
  unsigned int tr = t[row];
  if (tr == 0u || tr >= (unsigned int)c) return;
  const float *zr = z + (size_t)row * c;
  int lo = part * seg, hi = min(c, lo + seg);
  float m = -INFINITY, sum = 0.0f;
  for (int j = lo + threadIdx.x; j < hi; j += blockDim.x) {
    float v = zr[j];
    if (v > m) {
      sum = sum * expf(m - v) + 1.0f;
      m = v;
    } else if (v != -INFINITY) {
      // A NaN lands here and makes the sum NaN, as it makes the row's sum NaN in
      // rb_catalog_rows; a −∞ adds nothing (before any finite logit, exp(−∞ − (−∞)) would).
      sum += expf(v - m);
    }
  }
  float mx = block_max(m, scratch);
  // A thread without logits, or with −∞ only, adds 0; one with NaN keeps it (NaN·0 is NaN).
  float total = block_sum(sum == 0.0f ? 0.0f : sum * expf(m - mx), scratch);
  if (threadIdx.x == 0) {
    float *out = parts + ((size_t)row * gridDim.y + part) * 2;
    out[0] = mx;
    out[1] = total;
  }
}

// rb_catalog_row_grads: per (row, segment), the row's log-sum-exp from its segments' parts
// (warp 0), then w·(softmax − onehot) into the segment of dz; segment 0 writes the row's weighted
// loss (lse − z[t])·w. Rows without a target: zeros and loss 0 where t = 0, NaN where t ≥ c, as
// rb_catalog_rows.
extern "C" __global__ void rb_catalog_row_grads(const float *z, const unsigned int *t,
                                                const float *w, const float *parts, float *dz,
                                                float *losses, int rows, int c, int seg) {
  __shared__ float row_lse;
  int row = blockIdx.x, part = blockIdx.y, segments = gridDim.y;
  if (row >= rows) return;
  unsigned int tr = t[row];
  const float *zr = z + (size_t)row * c;
  float *dr = dz + (size_t)row * c;
  int lo = part * seg, hi = min(c, lo + seg);
  if (tr == 0u || tr >= (unsigned int)c) {
    float fill = tr == 0u ? 0.0f : NAN;
    for (int j = lo + threadIdx.x; j < hi; j += blockDim.x) dr[j] = fill;
    if (part == 0 && threadIdx.x == 0) losses[row] = fill;
    return;
  }
  if (threadIdx.x < 32) {
    const float *pr = parts + (size_t)row * segments * 2;
    float mx = -INFINITY;
    for (int k = threadIdx.x; k < segments; k += 32) mx = fmaxf(mx, pr[2 * k]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int k = threadIdx.x; k < segments; k += 32) sum += pr[2 * k + 1] * expf(pr[2 * k] - mx);
    sum = warp_sum(sum);
    if (threadIdx.x == 0) row_lse = mx + logf(sum);
  }
  __syncthreads();
  float lse = row_lse, wr = w[row];
  for (int j = lo + threadIdx.x; j < hi; j += blockDim.x) {
    float v = wr * expf(zr[j] - lse);
    dr[j] = (j == (int)tr) ? v - wr : v;
  }
  if (part == 0 && threadIdx.x == 0) losses[row] = (lse - zr[tr]) * wr;
}

// ---------------------------------------------------------------------------------------------
// Dropout draws element by element (for kernels that apply a mask inside another pass): the keep
// decision of element i under `key`, the same function as rb_dropout's.

__device__ __forceinline__ bool dropout_keep(unsigned long long i, uint2 key,
                                             unsigned int threshold) {
  unsigned long long g = i >> 7;
  unsigned int r = (unsigned int)(i & 127);
  unsigned long long b = g * 16 + (r & 15);
  unsigned int d = r >> 4;
  uint4 w = philox4x32_10(make_uint4((unsigned int)b, (unsigned int)(b >> 32), 0u, 0u), key);
  unsigned int words[4] = {w.x, w.y, w.z, w.w};
  unsigned int word = words[d >> 1];
  unsigned int draw = (d & 1) ? (word >> 16) : (word & 0xffffu);
  return draw < threshold;
}

// The mask value of element i: `dscale` where kept, else 0; 1 without dropout (use_mask 0).
__device__ __forceinline__ float mask_value(unsigned long long i, int use_mask, uint2 key,
                                            unsigned int threshold, float dscale) {
  if (!use_mask) return 1.0f;
  return dropout_keep(i, key, threshold) ? dscale : 0.0f;
}

// ---------------------------------------------------------------------------------------------
// Attention weights: y = softmax(s·scale + bias) over rows of n keys, p = y·mask (dropout; mask
// value `dscale` or 0, `use_mask` 0 = no dropout). Rows are (batch, head, query) of scores
// [B, H, Q, n]; the bias is [Bb, 1, Qb, n] with Bb in {1, B} and Qb in {1, Q} (broadcast), or
// absent (bias_b = 0). One warp per row; y is kept for the backward pass.

extern "C" __global__ void rb_attention_probs_fwd(const float *s, const float *bias, float *p,
                                                  float *y, int rows, int n, int heads,
                                                  int queries, int bias_b, int bias_q,
                                                  float scale, int use_mask, unsigned int key_lo,
                                                  unsigned int key_hi,
                                                  const unsigned long long *key_slot,
                                                  unsigned int threshold, float dscale) {
  int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  int lane = threadIdx.x & 31;
  if (row >= rows) return;
  uint2 key = mask_key(key_lo, key_hi, key_slot);
  int q = row % queries;
  int b = row / (queries * heads);
  const float *sr = s + (size_t)row * n;
  const float *br = 0;
  if (bias_b > 0) {
    int bb = bias_b == 1 ? 0 : b;
    int bq = bias_q == 1 ? 0 : q;
    br = bias + ((size_t)bb * bias_q + bq) * n;
  }
  float mx = -INFINITY;
  for (int j = lane; j < n; j += 32) {
    float v = sr[j] * scale + (br ? br[j] : 0.0f);
    mx = fmaxf(mx, v);
  }
  mx = warp_max(mx);
  float sum = 0.0f;
  for (int j = lane; j < n; j += 32) sum += expf(sr[j] * scale + (br ? br[j] : 0.0f) - mx);
  sum = warp_sum(sum);
  float *yr = y + (size_t)row * n;
  float *pr = p + (size_t)row * n;
  for (int j = lane; j < n; j += 32) {
    float v = expf(sr[j] * scale + (br ? br[j] : 0.0f) - mx) / sum;
    yr[j] = v;
    pr[j] = v * mask_value((unsigned long long)row * n + j, use_mask, key, threshold,
                           dscale);
  }
}

// ds = scale · y·(dy − Σ dy·y) with dy = dp·mask.
extern "C" __global__ void rb_attention_probs_bwd(const float *y, const float *dp, float *ds,
                                                  int rows, int n, float scale, int use_mask,
                                                  unsigned int key_lo, unsigned int key_hi,
                                                  const unsigned long long *key_slot,
                                                  unsigned int threshold, float dscale) {
  int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  int lane = threadIdx.x & 31;
  if (row >= rows) return;
  uint2 key = mask_key(key_lo, key_hi, key_slot);
  const float *yr = y + (size_t)row * n;
  const float *gr = dp + (size_t)row * n;
  float *dr = ds + (size_t)row * n;
  float dot = 0.0f;
  for (int j = lane; j < n; j += 32) {
    float m = mask_value((unsigned long long)row * n + j, use_mask, key, threshold,
                         dscale);
    dot += gr[j] * m * yr[j];
  }
  dot = warp_sum(dot);
  for (int j = lane; j < n; j += 32) {
    float m = mask_value((unsigned long long)row * n + j, use_mask, key, threshold,
                         dscale);
    dr[j] = scale * yr[j] * (gr[j] * m - dot);
  }
}

// ---------------------------------------------------------------------------------------------
// Feed-forward activation then dropout: out = act(h)·mask, act 0 = ReLU, 1 = exact GELU.

__device__ __forceinline__ float act_fwd(float h, int act) {
  if (act == 0) return h > 0.0f ? h : 0.0f;
  return 0.5f * h * (1.0f + erff(h * 0.70710678118654752f));
}

__device__ __forceinline__ float act_grad(float h, int act) {
  if (act == 0) return h > 0.0f ? 1.0f : 0.0f;
  float cdf = 0.5f * (1.0f + erff(h * 0.70710678118654752f));
  float pdf = 0.39894228040143268f * expf(-0.5f * h * h);
  return cdf + h * pdf;
}

extern "C" __global__ void rb_act_dropout_fwd(const float *h, float *out, unsigned long long n,
                                              int act, int use_mask, unsigned int key_lo,
                                              unsigned int key_hi,
                                              const unsigned long long *key_slot,
                                              unsigned int threshold, float dscale) {
  unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  uint2 key = mask_key(key_lo, key_hi, key_slot);
  out[i] = act_fwd(h[i], act) * mask_value(i, use_mask, key, threshold, dscale);
}

extern "C" __global__ void rb_act_dropout_bwd(const float *h, const float *g, float *dh,
                                              unsigned long long n, int act, int use_mask,
                                              unsigned int key_lo, unsigned int key_hi,
                                              const unsigned long long *key_slot,
                                              unsigned int threshold, float dscale) {
  unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  uint2 key = mask_key(key_lo, key_hi, key_slot);
  dh[i] = g[i] * mask_value(i, use_mask, key, threshold, dscale) * act_grad(h[i], act);
}

// ---------------------------------------------------------------------------------------------
// A linear layer's bias: out[r, c] = x[r, c] + b[c].

extern "C" __global__ void rb_bias_add(const float *x, const float *b, float *out,
                                       unsigned long long n, int cols) {
  unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  out[i] = x[i] + b[i % (unsigned long long)cols];
}

// ---------------------------------------------------------------------------------------------
// Rows scaled by a factor each (nn/masks.rs, a timeline mask): out[r, c] = x[r, c] * m[r].

extern "C" __global__ void rb_row_scale(const float *x, const float *m, float *out,
                                        unsigned long long n, int cols) {
  unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  out[i] = x[i] * m[i / (unsigned long long)cols];
}

// ---------------------------------------------------------------------------------------------
// The catalog softmax loss from its rows' weighted losses l [m] (nn/catalog_softmax.rs): RecTools'
// Σ l / count(l > 0), and the gradients' factor 1 / (count · temperature); one block of 256
// threads, each summing a strided share in order, then a fixed tree: the same bits every run.
// out[0] = the loss (NaN when no row has a positive loss), out[1] = the factor.

extern "C" __global__ void rb_catalog_loss_total(const float *l, unsigned long long m,
                                                 float temperature, float *out) {
  __shared__ float scratch[8];
  float sum = 0.0f, count = 0.0f;
  for (unsigned long long i = threadIdx.x; i < m; i += blockDim.x) {
    float v = l[i];
    sum += v;
    count += v > 0.0f ? 1.0f : 0.0f;
  }
  sum = block_sum(sum, scratch);
  count = block_sum(count, scratch);
  if (threadIdx.x == 0) {
    out[0] = sum / count;
    out[1] = 1.0f / (count * temperature);
  }
}

// ---------------------------------------------------------------------------------------------
// Position rows added to sessions (nn/position_rows.rs): out[b, l, c] = x[b, l, c] + t[rows[l], c]
// for x [B, L, d] (n = B·L·d); one thread per element.

extern "C" __global__ void rb_add_position_rows(const float *x, const float *t,
                                                const unsigned int *rows, float *out,
                                                unsigned long long n, int l, int d) {
  unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  unsigned long long col = i % (unsigned long long)d;
  unsigned long long pos = (i / (unsigned long long)d) % (unsigned long long)l;
  out[i] = x[i] + t[(unsigned long long)rows[pos] * d + col];
}

// Their table's gradient: dt[rows[p], c] = Σ_b g[b, p, c], summed in batch order; the rows are
// distinct, so each is written by one thread (dt is zeroed first). One thread per (p, c).
extern "C" __global__ void rb_position_rows_grad(const float *g, const unsigned int *rows,
                                                 float *dt, int b, int l, int d) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= l * d) return;
  int pos = i / d, col = i % d;
  float s = 0.0f;
  for (int k = 0; k < b; ++k) s += g[((unsigned long long)k * l + pos) * d + col];
  dt[(unsigned long long)rows[pos] * d + col] = s;
}

// ---------------------------------------------------------------------------------------------
// Attention biases (nn/masks.rs) built on the device from input ids [b, l] (u32): 0 where a query
// may attend to a key, −inf where not. mode 0: causal, [1, 1, l, l] (ids unused); 1: key
// padding, [b, 1, 1, l]; 2: RecTools' merged mask, [b, 1, l, l] (causal or padding, the diagonal
// always allowed). One thread per output element.

extern "C" __global__ void rb_attention_bias(const unsigned int *ids, float *out,
                                             unsigned long long n, int l, int mode) {
  unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  unsigned long long j = i % (unsigned long long)l;
  if (mode == 1) {
    out[i] = ids[i] == 0u ? -INFINITY : 0.0f;
    return;
  }
  unsigned long long row = i / (unsigned long long)l;
  unsigned long long q = row % (unsigned long long)l;
  bool masked = j > q;
  if (mode == 2) masked = (masked || ids[(row / (unsigned long long)l) * l + j] == 0u) && j != q;
  out[i] = masked ? -INFINITY : 0.0f;
}

// ---------------------------------------------------------------------------------------------
// Rows by id: lookups, sums by id (their gradients) and the sampled losses' candidate scores.
#include "rows.cu"
