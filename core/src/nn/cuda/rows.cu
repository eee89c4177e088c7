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
// block in a fixed order. Nothing depends on timing: no atomics, the same bits on every run.

// Entries sorted per block by `rb_sort_tiles` (one per thread; a power of two).
#define RB_SORT_TILE 1024
// Lanes of `rb_sum_rows_by_id`: lane y sums entries y, y + 8, ... of a run, 32 columns at a time.
#define RB_SUM_LANES 8

// The sort key of entry p: its id in the high word, p in the low word.
__device__ __forceinline__ unsigned long long rb_row_key(unsigned int id, unsigned long long p) {
  return ((unsigned long long)id << 32) | p;
}

// Sorts the keys of entries [RB_SORT_TILE·b, RB_SORT_TILE·(b + 1)) of `ids` into the same range
// of `keys` (bitonic sort in shared memory; the tile past the last entry is padded with the
// largest key, which sorts after every entry's, since n < 2^32 - 1). Block size RB_SORT_TILE.
extern "C" __global__ void rb_sort_tiles(const unsigned int *ids, unsigned long long *keys,
                                         unsigned int n) {
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

// Sums by id over `keys` (n entries sorted by `rb_sort_tiles` + `rb_merge_runs`):
// out[id] = Σ over the entries p naming id of scale[p]·src[p / per_row] (scale 1 where null),
// rows of `d` floats. One block (32 × RB_SUM_LANES threads) per sorted slot; the block whose slot
// starts an id's run sums it: lane y takes entries y, y + RB_SUM_LANES, ... in order, then lane 0
// adds the lanes' sums in order. Rows that no entry names are left as they are (the caller zeroes
// `out`); ids at or above n_rows are skipped.
extern "C" __global__ void rb_sum_rows_by_id(const unsigned long long *keys, unsigned int n,
                                             const float *src, const float *scale,
                                             unsigned int per_row, unsigned int d, float *out,
                                             unsigned int n_rows) {
  __shared__ float part[RB_SUM_LANES][32];
  unsigned int s = blockIdx.x;
  if (s >= n) return;
  unsigned int id = (unsigned int)(keys[s] >> 32);
  // The whole block leaves together (every thread reads the same keys).
  if (s > 0 && (unsigned int)(keys[s - 1] >> 32) == id) return;
  if (id >= n_rows) return;
  // The run's end: the first slot with a larger id (ids are below n_rows < 2^32 - 1).
  unsigned long long bound = (unsigned long long)(id + 1) << 32;
  unsigned int a = s + 1, b = n;
  while (a < b) {
    unsigned int mid = a + (b - a) / 2;
    if (keys[mid] < bound)
      a = mid + 1;
    else
      b = mid;
  }
  unsigned int end = a;
  unsigned int x = threadIdx.x, y = threadIdx.y;
  for (unsigned int c0 = 0; c0 < d; c0 += 32) {
    unsigned int c = c0 + x;
    float acc = 0.0f;
    if (c < d) {
      for (unsigned int q = s + y; q < end; q += RB_SUM_LANES) {
        unsigned int p = (unsigned int)(keys[q] & 0xffffffffull);
        float v = src[(unsigned long long)(p / per_row) * d + c];
        acc += scale ? scale[p] * v : v;
      }
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

// out[m, k] = h[m] · table[ids[m, k]] over d columns, in column order (the CPU op's order); NaN for
// an id at or above n_rows. One thread per (m, k); n = M·K.
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
