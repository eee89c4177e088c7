// Rows looked up by id, and the sums by id that are their gradients: the device forms of
// `nn::gather_rows` (an embedding lookup, `table.index_select(ids, 0)`), `nn::scatter_add_rows`
// and `nn::gather_dot` (the sampled losses' candidate scores). Included by kernels.cu;
// `core/tests/cuda_kernels_on_cpu.rs` also runs these kernels on the CPU, under emulation.
//
// The gradient of a lookup sums, for each id, the output-gradient rows of the entries that named
// it. candle's CUDA `index_add` gives that sum one thread per column, each walking every entry in
// turn: 6,400 ids cost ~3 ms on an H200, more than the rest of a SASRec step. Here the entries are
// first sorted by id, on the device and in a fixed order (a stable sort: a merge sort of the keys
// (id << 32 | entry), which are distinct), and then each id's run of entries is summed by one
// warp (short runs) or one block (long ones) in a fixed order. Nothing depends on timing: no
// atomics, the same bits on every run.

// Entries sorted per block by `rb_sort_tiles` (one per thread; a power of two).
#define RB_SORT_TILE 1024
// Warps per block of the sums by id, and lanes of `rb_sum_long_runs`: lane y sums entries
// y, y + 8, ... of a long run, 32 columns at a time.
#define RB_SUM_LANES 8
// Runs of at most this many entries are summed by one warp (`rb_sum_short_runs`), longer ones by
// a block (`rb_sum_long_runs`).
#define RB_SHORT_RUN 32

// The sort key of entry p: its id in the high word, p in the low word.
__device__ __forceinline__ unsigned long long rb_row_key(unsigned int id, unsigned long long p) {
  return ((unsigned long long)id << 32) | p;
}

// Sorts the keys of entries [RB_SORT_TILE·b, RB_SORT_TILE·(b + 1)) of `ids` into the same range
// of `keys` (bitonic sort in shared memory; the tile past the last entry is padded with the
// largest key, which sorts after every entry's, since n < 2^32 - 1). Block size RB_SORT_TILE,
// which the launch bounds let the compiler count on (at most 64 registers a thread, so a block of
// 1,024 threads always finds room on an SM).
extern "C" __global__ void __launch_bounds__(RB_SORT_TILE)
    rb_sort_tiles(const unsigned int *ids, unsigned long long *keys, unsigned int n) {
  __shared__ unsigned long long s[RB_SORT_TILE];
  unsigned int t = threadIdx.x;
  unsigned long long p = (unsigned long long)blockIdx.x * RB_SORT_TILE + t;
  s[t] = p < n ? rb_row_key(ids[p], p) : ~0ull;
  __syncthreads();
  for (unsigned int k = 2; k <= RB_SORT_TILE; k <<= 1) {
    for (unsigned int j = k >> 1; j > 0; j >>= 1) {
      unsigned int q = t ^ j;
      if (q > t) {
        unsigned long long a = s[t], b = s[q];
        bool ascending = (t & k) == 0;
        if ((a > b) == ascending) {
          s[t] = b;
          s[q] = a;
        }
      }
      __syncthreads();
    }
  }
  if (p < n) keys[p] = s[t];
}

// One pass of the merge sort: `in` holds sorted runs of `run` keys (the last may be shorter);
// runs 2r and 2r + 1 are merged into `out`. A key lands at its index in its own run plus the
// number of keys of the other run below it (a binary search; keys are distinct). A run with no
// partner is copied. One thread per key.
extern "C" __global__ void rb_merge_runs(const unsigned long long *in, unsigned long long *out,
                                         unsigned int n, unsigned int run) {
  unsigned long long g = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= n) return;
  unsigned long long key = in[g];
  unsigned long long r = g / run;
  unsigned long long own = r * run, other = (r ^ 1ull) * run;
  unsigned long long len = 0;
  if (other < n) len = n - other < run ? n - other : run;
  unsigned long long a = 0, b = len;
  while (a < b) {
    unsigned long long mid = (a + b) >> 1;
    if (in[other + mid] < key)
      a = mid + 1;
    else
      b = mid;
  }
  unsigned long long first = own < other ? own : other;
  out[first + (g - own) + a] = key;
}

// First slot in keys[lo, hi) whose key is at least `bound` (keys sorted).
__device__ __forceinline__ unsigned int rb_lower_bound(const unsigned long long *keys,
                                                       unsigned int lo, unsigned int hi,
                                                       unsigned long long bound) {
  while (lo < hi) {
    unsigned int mid = lo + (hi - lo) / 2;
    if (keys[mid] < bound)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// The value entry p adds to column c: scale[p]·src[p / per_row, c] (scale 1 where null).
__device__ __forceinline__ float rb_entry_value(const unsigned long long *keys, unsigned int q,
                                                const float *src, const float *scale,
                                                unsigned int per_row, unsigned int d,
                                                unsigned int c) {
  unsigned int p = (unsigned int)(keys[q] & 0xffffffffull);
  float v = src[(unsigned long long)(p / per_row) * d + c];
  return scale ? scale[p] * v : v;
}

// Sums by id over `keys` (n entries sorted by `rb_sort_tiles` + `rb_merge_runs`):
// out[id] = Σ over the entries p naming id of scale[p]·src[p / per_row] (scale 1 where null),
// rows of `d` floats. Rows that no entry names are left as they are (the caller zeroes `out`);
// ids at or above n_rows are skipped. Two kernels share the runs of entries by their length:
//
// rb_sum_short_runs: one warp per sorted slot (blocks of 32 × RB_SUM_LANES threads, so
// RB_SUM_LANES slots a block); the warp whose slot starts a run of at most RB_SHORT_RUN entries
// sums it, a lane per column, entries in order (the order of the CPU's loops).
extern "C" __global__ void rb_sum_short_runs(const unsigned long long *keys, unsigned int n,
                                             const float *src, const float *scale,
                                             unsigned int per_row, unsigned int d, float *out,
                                             unsigned int n_rows) {
  unsigned long long s64 = (unsigned long long)blockIdx.x * RB_SUM_LANES + threadIdx.y;
  if (s64 >= n) return;
  unsigned int s = (unsigned int)s64;
  unsigned int id = (unsigned int)(keys[s] >> 32);
  if (s > 0 && (unsigned int)(keys[s - 1] >> 32) == id) return;
  if (id >= n_rows) return;
  // The run's end: the first slot with a larger id (ids are below n_rows < 2^32 - 1). Short runs
  // end within RB_SHORT_RUN slots, so the search looks no further.
  unsigned int limit = n - s > RB_SHORT_RUN ? s + RB_SHORT_RUN + 1 : n;
  unsigned int end = rb_lower_bound(keys, s + 1, limit, (unsigned long long)(id + 1) << 32);
  if (end - s > RB_SHORT_RUN) return;
  for (unsigned int c = threadIdx.x; c < d; c += 32) {
    float acc = 0.0f;
    for (unsigned int q = s; q < end; ++q)
      acc += rb_entry_value(keys, q, src, scale, per_row, d, c);
    out[(unsigned long long)id * d + c] = acc;
  }
}

// rb_sum_long_runs: runs of more than RB_SHORT_RUN entries, one block (32 × RB_SUM_LANES
// threads) each. Such a run covers a slot that is a multiple of RB_SHORT_RUN; block j looks at
// slot j·RB_SHORT_RUN and sums the run there if that slot is the run's first such multiple: lane y
// takes entries y, y + RB_SUM_LANES, ... in order, then lane 0 adds the lanes' sums in order.
extern "C" __global__ void rb_sum_long_runs(const unsigned long long *keys, unsigned int n,
                                            const float *src, const float *scale,
                                            unsigned int per_row, unsigned int d, float *out,
                                            unsigned int n_rows) {
  __shared__ float part[RB_SUM_LANES][32];
  unsigned long long s64 = (unsigned long long)blockIdx.x * RB_SHORT_RUN;
  if (s64 >= n) return;
  unsigned int s = (unsigned int)s64;
  // The whole block leaves together (every thread reads the same keys).
  unsigned int id = (unsigned int)(keys[s] >> 32);
  if (id >= n_rows) return;
  unsigned int head = rb_lower_bound(keys, 0, s, (unsigned long long)id << 32);
  unsigned int end = rb_lower_bound(keys, s + 1, n, (unsigned long long)(id + 1) << 32);
  if (end - head <= RB_SHORT_RUN) return;
  unsigned int first = (head + RB_SHORT_RUN - 1) / RB_SHORT_RUN * RB_SHORT_RUN;
  if (first != s) return;
  unsigned int x = threadIdx.x, y = threadIdx.y;
  for (unsigned int c0 = 0; c0 < d; c0 += 32) {
    unsigned int c = c0 + x;
    float acc = 0.0f;
    if (c < d) {
      for (unsigned int q = head + y; q < end; q += RB_SUM_LANES)
        acc += rb_entry_value(keys, q, src, scale, per_row, d, c);
    }
    part[y][x] = acc;
    __syncthreads();
    if (y == 0 && c < d) {
      float total = 0.0f;
      for (int l = 0; l < RB_SUM_LANES; ++l) total += part[l][x];
      out[(unsigned long long)id * d + c] = total;
    }
    __syncthreads();
  }
}

// out[r, c] = table[ids[r], c] for r < m (n = m·d elements); NaN for an id at or above n_rows, so
// that a bad id shows in the loss instead of reading outside the table.
extern "C" __global__ void rb_gather_rows(const float *table, const unsigned int *ids, float *out,
                                          unsigned long long n, unsigned int d,
                                          unsigned int n_rows) {
  unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
       e += stride) {
    unsigned long long r = e / d, c = e % d;
    unsigned int id = ids[r];
    out[e] = id < n_rows ? table[(unsigned long long)id * d + c] : __int_as_float(0x7fc00000);
  }
}

// out[m, k] = h[m] · table[ids[m, k]] over d columns, in column order (the CPU op's order);
// NaN for an id at or above n_rows. One thread per (m, k); n = M·K.
extern "C" __global__ void rb_gather_dot(const float *h, const float *table,
                                         const unsigned int *ids, float *out,
                                         unsigned long long n, unsigned int k, unsigned int d,
                                         unsigned int n_rows) {
  unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
       e += stride) {
    unsigned int id = ids[e];
    if (id >= n_rows) {
      out[e] = __int_as_float(0x7fc00000);
      continue;
    }
    const float *row = h + (e / k) * d;
    const float *item = table + (unsigned long long)id * d;
    float acc = 0.0f;
    for (unsigned int c = 0; c < d; ++c) acc += row[c] * item[c];
    out[e] = acc;
  }
}

// The rows' gradient of rb_gather_dot: out[m, c] = Σ_k g[m, k]·table[ids[m, k], c], over k in
// order; ids at or above n_rows add nothing. One thread per (m, c); n = M·d.
extern "C" __global__ void rb_gather_dot_grad_rows(const float *g, const float *table,
                                                   const unsigned int *ids, float *out,
                                                   unsigned long long n, unsigned int k,
                                                   unsigned int d, unsigned int n_rows) {
  unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
       e += stride) {
    unsigned long long m = e / d, c = e % d;
    float acc = 0.0f;
    for (unsigned int j = 0; j < k; ++j) {
      unsigned long long p = m * k + j;
      unsigned int id = ids[p];
      if (id < n_rows) acc += g[p] * table[(unsigned long long)id * d + c];
    }
    out[e] = acc;
  }
}
