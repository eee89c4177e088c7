// Runs the kernels of `src/nn/cuda/rows.cu` on the CPU (through emulate.h) and checks them against
// plain loops: the sort of entries by id, the sums by id, the row lookup and the candidate
// scores. Each check prints `ok <name>` or `FAIL <name>: ...`; the exit status is the number of
// failures. Built and run by `tests/cuda_kernels_on_cpu.rs`.
#include <algorithm>
#include <cstdio>
#include <random>

#include "emulate.h"
#include "../../src/nn/cuda/rows.cu"

static int failures = 0;

static void report(bool ok, const char *name, const char *detail) {
  if (ok) {
    std::printf("ok %s\n", name);
  } else {
    std::printf("FAIL %s: %s\n", name, detail);
    ++failures;
  }
}

// The launcher's sort (nn/cuda/rows.rs): tiles, then merge passes until one run remains.
static std::vector<unsigned long long> sort_keys(const std::vector<unsigned int> &ids) {
  unsigned int n = (unsigned int)ids.size();
  std::vector<unsigned long long> a(n), b(n);
  rb_launch(dim3((n + RB_SORT_TILE - 1) / RB_SORT_TILE), dim3(RB_SORT_TILE),
            [&] { rb_sort_tiles(ids.data(), a.data(), n); });
  for (unsigned long long run = RB_SORT_TILE; run < n; run *= 2) {
    rb_launch(dim3((n + 255) / 256), dim3(256),
              [&] { rb_merge_runs(a.data(), b.data(), n, (unsigned int)run); });
    std::swap(a, b);
  }
  return a;
}

static std::vector<unsigned int> random_ids(size_t n, unsigned int range, unsigned int seed) {
  std::mt19937 rng(seed);
  std::vector<unsigned int> ids(n);
  for (auto &i : ids) i = rng() % range;
  return ids;
}

static std::vector<float> random_values(size_t n, unsigned int seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto &x : v) x = u(rng);
  return v;
}

static bool close(const std::vector<float> &a, const std::vector<float> &b, float tol,
                  char *detail) {
  if (a.size() != b.size()) {
    std::snprintf(detail, 200, "sizes %zu and %zu", a.size(), b.size());
    return false;
  }
  for (size_t i = 0; i < a.size(); ++i) {
    bool both_nan = std::isnan(a[i]) && std::isnan(b[i]);
    if (!both_nan && !(std::fabs(a[i] - b[i]) <= tol * (1.0f + std::fabs(b[i])))) {
      std::snprintf(detail, 200, "element %zu: %g against %g", i, a[i], b[i]);
      return false;
    }
  }
  return true;
}

static void check_sort(size_t n, unsigned int range, unsigned int seed) {
  char name[100], detail[200] = "";
  std::snprintf(name, sizeof name, "sort n=%zu ids<%u", n, range);
  auto ids = random_ids(n, range, seed);
  auto got = sort_keys(ids);
  std::vector<unsigned long long> want(n);
  for (size_t p = 0; p < n; ++p) want[p] = ((unsigned long long)ids[p] << 32) | p;
  std::sort(want.begin(), want.end());
  size_t bad = 0;
  while (bad < n && got[bad] == want[bad]) ++bad;
  std::snprintf(detail, sizeof detail, "slot %zu differs", bad);
  report(bad == n, name, detail);
}

// out[id] += scale[p] * src[p / per_row], by id, against a plain loop in entry order.
static void check_sums(size_t n, unsigned int n_rows, unsigned int range, unsigned int per_row,
                       unsigned int d, bool scaled, unsigned int seed) {
  char name[120], detail[200] = "";
  std::snprintf(name, sizeof name, "sum by id n=%zu rows=%u ids<%u per_row=%u d=%u%s", n, n_rows,
                range, per_row, d, scaled ? " scaled" : "");
  auto ids = random_ids(n, range, seed);
  // A long run of one id (a padding id, say) that every lane shares.
  for (size_t p = 0; p < n; p += 3) ids[p] = 1;
  auto src = random_values(n / per_row * d, seed + 1);
  auto scale = random_values(n, seed + 2);
  std::vector<float> want(size_t(n_rows) * d, 0.0f);
  for (size_t p = 0; p < n; ++p) {
    if (ids[p] >= n_rows) continue;
    for (unsigned int c = 0; c < d; ++c)
      want[size_t(ids[p]) * d + c] += (scaled ? scale[p] : 1.0f) * src[p / per_row * d + c];
  }
  auto keys = sort_keys(ids);
  std::vector<float> got(size_t(n_rows) * d, 0.0f);
  rb_launch(dim3((unsigned int)n), dim3(32, RB_SUM_LANES), [&] {
    rb_sum_rows_by_id(keys.data(), (unsigned int)n, src.data(), scaled ? scale.data() : nullptr,
                      per_row, d, got.data(), n_rows);
  });
  report(close(got, want, 1e-5f, detail), name, detail);
}

static void check_gather(size_t m, unsigned int n_rows, unsigned int d) {
  char name[100], detail[200] = "";
  std::snprintf(name, sizeof name, "gather rows m=%zu rows=%u d=%u", m, n_rows, d);
  auto ids = random_ids(m, n_rows + 2, 7);  // some ids past the table: NaN rows
  auto table = random_values(size_t(n_rows) * d, 8);
  std::vector<float> want(m * d), got(m * d);
  for (size_t r = 0; r < m; ++r)
    for (unsigned int c = 0; c < d; ++c)
      want[r * d + c] = ids[r] < n_rows ? table[size_t(ids[r]) * d + c] : NAN;
  unsigned long long n = m * d;
  rb_launch(dim3(3), dim3(64),
            [&] { rb_gather_rows(table.data(), ids.data(), got.data(), n, d, n_rows); });
  report(close(got, want, 0.0f, detail), name, detail);
}

static void check_gather_dot(size_t m, unsigned int k, unsigned int n_rows, unsigned int d) {
  char name[100], detail[200] = "";
  std::snprintf(name, sizeof name, "gather dot m=%zu k=%u rows=%u d=%u", m, k, n_rows, d);
  auto ids = random_ids(m * k, n_rows + 1, 9);
  auto h = random_values(m * d, 10);
  auto table = random_values(size_t(n_rows) * d, 11);
  auto g = random_values(m * k, 12);
  std::vector<float> want(m * k), got(m * k), want_h(m * d, 0.0f), got_h(m * d);
  for (size_t e = 0; e < m * k; ++e) {
    if (ids[e] >= n_rows) {
      want[e] = NAN;
      continue;
    }
    float acc = 0.0f;
    for (unsigned int c = 0; c < d; ++c) acc += h[e / k * d + c] * table[size_t(ids[e]) * d + c];
    want[e] = acc;
    for (unsigned int c = 0; c < d; ++c)
      want_h[e / k * d + c] += g[e] * table[size_t(ids[e]) * d + c];
  }
  rb_launch(dim3(4), dim3(64), [&] {
    rb_gather_dot(h.data(), table.data(), ids.data(), got.data(), m * k, k, d, n_rows);
  });
  report(close(got, want, 1e-5f, detail), name, detail);
  std::snprintf(name, sizeof name, "gather dot rows' gradient m=%zu k=%u d=%u", m, k, d);
  rb_launch(dim3(4), dim3(64), [&] {
    rb_gather_dot_grad_rows(g.data(), table.data(), ids.data(), got_h.data(), m * d, k, d,
                            n_rows);
  });
  report(close(got_h, want_h, 1e-5f, detail), name, detail);
}

int main() {
  check_sort(1, 5, 1);
  check_sort(1000, 7, 2);
  check_sort(1024, 1u << 31, 3);
  check_sort(1025, 40, 4);
  check_sort(5000, 300, 5);
  check_sort(9000, 3, 6);
  check_sums(700, 50, 50, 1, 70, false, 20);
  check_sums(2600, 40, 45, 1, 16, false, 21);
  check_sums(2400, 30, 30, 4, 33, true, 22);
  check_gather(37, 9, 5);
  check_gather_dot(13, 6, 11, 37);
  std::printf("%d failed\n", failures);
  return failures;
}
