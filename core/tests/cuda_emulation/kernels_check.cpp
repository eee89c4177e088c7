// Runs kernels of `src/nn/cuda/kernels.cu` on the CPU (through emulate.h) and checks them against
// plain loops: the sort of entries by id, the sums by id, the row lookup and the candidate scores
// (`rows.cu`); Adam over a table of parameters, with its guard and its coefficients from memory;
// the attention biases; the dropout kernels' keys read from memory against keys by value, and the
// dropout with a residual sum against the dropout plus the residual; the
// layer norm forward and backward; the cross-entropy and catalog-loss row kernels and the
// catalog loss's total; the bias,
// row-scale and softmax row kernels; and the position rows with their table's gradient.
// Each check prints `ok <name>` or `FAIL <name>: ...`; the exit status is the number of failures.
// Built and run by `tests/cuda_kernels_on_cpu.rs`.
#include <algorithm>
#include <cstdio>
#include <random>

#include "emulate.h"
#include "../../src/nn/cuda/kernels.cu"

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

// The launcher's sums by id (nn/cuda/rows.rs): sort, then the short-run and long-run kernels.
static std::vector<float> sums_by_id(const std::vector<unsigned int> &ids,
                                     const std::vector<float> &src, const float *scale,
                                     unsigned int per_row, unsigned int d, unsigned int n_rows) {
  auto keys = sort_keys(ids);
  unsigned int n = (unsigned int)ids.size();
  std::vector<float> out(size_t(n_rows) * d, 0.0f);
  rb_launch(dim3((n + RB_SUM_LANES - 1) / RB_SUM_LANES), dim3(32, RB_SUM_LANES), [&] {
    rb_sum_short_runs(keys.data(), n, src.data(), scale, per_row, d, out.data(), n_rows);
  });
  rb_launch(dim3((n + RB_SHORT_RUN - 1) / RB_SHORT_RUN), dim3(32, RB_SUM_LANES), [&] {
    rb_sum_long_runs(keys.data(), n, src.data(), scale, per_row, d, out.data(), n_rows);
  });
  return out;
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
  auto got = sums_by_id(ids, src, scaled ? scale.data() : nullptr, per_row, d, n_rows);
  report(close(got, want, 1e-5f, detail), name, detail);
}

// Runs of every length around the short/long boundary, each id's entries spread over the input.
static void check_run_lengths() {
  char detail[200] = "";
  const std::vector<unsigned int> lengths = {1, 2, 31, 32, 33, 63, 64, 65, 97, 200};
  std::vector<unsigned int> ids;
  for (unsigned int i = 0; i < lengths.size(); ++i) ids.insert(ids.end(), lengths[i], i);
  std::mt19937 rng(77);
  std::shuffle(ids.begin(), ids.end(), rng);
  const unsigned int d = 40, n_rows = (unsigned int)lengths.size() + 1;
  auto src = random_values(ids.size() * d, 78);
  std::vector<float> want(size_t(n_rows) * d, 0.0f);
  for (size_t p = 0; p < ids.size(); ++p)
    for (unsigned int c = 0; c < d; ++c) want[size_t(ids[p]) * d + c] += src[p * d + c];
  auto got = sums_by_id(ids, src, nullptr, 1, d, n_rows);
  report(close(got, want, 1e-5f, detail), "sum by id, runs of 1 to 200 entries", detail);
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

// Adam over parameters of the given sizes in one launch, laid out as nn/cuda/mod.rs `adam_step`
// lays out its table (blocks of 256 threads, ceil(n / 256) blocks per parameter), against the
// host pass's operations in order; then a guard that is not finite changes nothing, and
// coefficients read from memory equal coefficients by value.
static void check_adam() {
  char detail[200] = "";
  const std::vector<unsigned int> sizes = {1, 255, 256, 257, 0, 1000, 3};
  std::vector<std::vector<float>> p, g, m, v;
  for (size_t t = 0; t < sizes.size(); ++t) {
    p.push_back(random_values(sizes[t], 100 + t));
    g.push_back(random_values(sizes[t], 200 + t));
    m.push_back(random_values(sizes[t], 300 + t));
    v.push_back(random_values(sizes[t], 400 + t));
    for (auto &x : v.back()) x = std::fabs(x);
  }
  AdamCoefficients k = {0.9f, 0.1f, 0.999f, 0.001f, 1.0f / 0.271f, 1.0f / 0.002997f, 1e-8f, 1e-3f};
  auto want_p = p, want_m = m, want_v = v;
  for (size_t t = 0; t < sizes.size(); ++t)
    for (unsigned int i = 0; i < sizes[t]; ++i) {
      float gi = g[t][i];
      float mi = m[t][i] * k.beta1 + gi * k.one_minus_beta1;
      float vi = v[t][i] * k.beta2 + (gi * gi) * k.one_minus_beta2;
      want_m[t][i] = mi;
      want_v[t][i] = vi;
      float denom = std::sqrt(vi * k.inv_bias2) + k.eps;
      want_p[t][i] = p[t][i] - ((mi * k.inv_bias1) / denom) * k.lr;
    }
  auto run = [&](std::vector<std::vector<float>> &pp, std::vector<std::vector<float>> &mm,
                 std::vector<std::vector<float>> &vv, AdamCoefficients by_value,
                 const AdamCoefficients *slot, const float *guard) {
    AdamTable table = {};
    unsigned int blocks = 0;
    for (size_t t = 0; t < sizes.size(); ++t) {
      table.p[t] = pp[t].data();
      table.g[t] = g[t].data();
      table.m[t] = mm[t].data();
      table.v[t] = vv[t].data();
      table.n[t] = sizes[t];
      table.first_block[t] = blocks;
      blocks += (sizes[t] + 255) / 256;
      table.count = (int)t + 1;
    }
    table.first_block[sizes.size()] = blocks;
    rb_launch(dim3(blocks), dim3(256), [&] { rb_adam_step(table, by_value, slot, guard); });
  };
  auto same = [&](const std::vector<std::vector<float>> &a,
                  const std::vector<std::vector<float>> &b) {
    for (size_t t = 0; t < a.size(); ++t)
      if (a[t] != b[t]) {
        std::snprintf(detail, sizeof detail, "parameter %zu (%u values) differs", t, sizes[t]);
        return false;
      }
    return true;
  };
  auto p1 = p, m1 = m, v1 = v;
  float loss = 2.5f;
  run(p1, m1, v1, k, nullptr, &loss);
  report(same(p1, want_p) && same(m1, want_m) && same(v1, want_v),
         "adam over 7 parameters, bit for bit", detail);
  auto p2 = p, m2 = m, v2 = v;
  float bad = NAN;
  run(p2, m2, v2, k, nullptr, &bad);
  report(same(p2, p) && same(m2, m) && same(v2, v), "adam changes nothing under a NaN guard",
         detail);
  auto p3 = p, m3 = m, v3 = v;
  AdamCoefficients zero = {};
  run(p3, m3, v3, zero, &k, nullptr);
  report(same(p3, want_p) && same(m3, want_m), "adam reads its coefficients from memory", detail);
}

// The causal, key-padding and merged biases of ids [b, l] against their definitions.
static void check_attention_bias() {
  char detail[200] = "";
  const int b = 3, l = 6;
  std::vector<unsigned int> ids = {0, 0, 4, 5, 6, 7, 1, 2, 3, 4, 5, 6, 0, 9, 0, 8, 7, 0};
  for (int mode = 0; mode < 3; ++mode) {
    size_t n = mode == 0 ? size_t(l) * l : mode == 1 ? size_t(b) * l : size_t(b) * l * l;
    std::vector<float> got(n, 1.0f), want(n);
    for (size_t i = 0; i < n; ++i) {
      size_t j = i % l, q = (i / l) % l, s = mode == 1 ? i / l : i / (size_t(l) * l);
      bool masked;
      if (mode == 0)
        masked = j > q;
      else if (mode == 1)
        masked = ids[s * l + j] == 0;
      else
        masked = j != q && (j > q || ids[s * l + j] == 0);
      want[i] = masked ? -INFINITY : 0.0f;
    }
    rb_launch(dim3(2), dim3(64),
              [&] { rb_attention_bias(ids.data(), got.data(), n, l, mode); });
    bool ok = got == want;
    if (!ok) std::snprintf(detail, sizeof detail, "mode %d differs", mode);
    char name[60];
    std::snprintf(name, sizeof name, "attention bias mode %d", mode);
    report(ok, name, detail);
  }
}

// The dropout kernels with their key read from memory (a captured step) draw the masks they draw
// with the key by value.
static void check_key_slots() {
  char detail[200] = "";
  const unsigned long long n = 1000, key = 0x1234567890abcdefull;
  auto x = random_values(n, 30);
  for (auto &e : x) e = std::fabs(e) + 0.5f;  // no zeros: a dropped element shows as 0
  std::vector<float> by_value(n), by_slot(n);
  const unsigned int threshold = 52429;  // keep ~80%
  unsigned int blocks = (unsigned int)((n + 127) / 128 * 16 + 255) / 256;
  rb_launch(dim3(blocks), dim3(256), [&] {
    rb_dropout(x.data(), by_value.data(), n, (unsigned int)key, (unsigned int)(key >> 32), nullptr,
               threshold, 1.25f);
  });
  rb_launch(dim3(blocks), dim3(256), [&] {
    rb_dropout(x.data(), by_slot.data(), n, 0, 0, &key, threshold, 1.25f);
  });
  size_t kept = 0;
  for (size_t i = 0; i < n; ++i) kept += by_value[i] != 0.0f;
  bool ok = by_value == by_slot && kept > 700 && kept < 900;
  std::snprintf(detail, sizeof detail, "%zu of %llu kept; slot and value %s", kept, n,
                by_value == by_slot ? "agree" : "differ");
  report(ok, "dropout key from memory equals key by value", detail);
  std::vector<float> act_value(n), act_slot(n);
  rb_launch(dim3((unsigned int)(n + 255) / 256), dim3(256), [&] {
    rb_act_dropout_fwd(x.data(), act_value.data(), n, 0, 1, (unsigned int)key,
                       (unsigned int)(key >> 32), nullptr, threshold, 1.25f);
  });
  rb_launch(dim3((unsigned int)(n + 255) / 256), dim3(256), [&] {
    rb_act_dropout_fwd(x.data(), act_slot.data(), n, 0, 1, 0, 0, &key, threshold, 1.25f);
  });
  report(act_value == act_slot, "activation dropout key from memory equals key by value",
         "the two differ");
  // Its backward (ReLU): g · mask · 1[h > 0] with rb_dropout's mask, the key from memory as by
  // value.
  auto h = random_values(n, 32), g = random_values(n, 33);
  std::vector<float> dh_value(n), dh_slot(n), want_dh(n);
  rb_launch(dim3((unsigned int)(n + 255) / 256), dim3(256), [&] {
    rb_act_dropout_bwd(h.data(), g.data(), dh_value.data(), n, 0, 1, (unsigned int)key,
                       (unsigned int)(key >> 32), nullptr, threshold, 1.25f);
  });
  rb_launch(dim3((unsigned int)(n + 255) / 256), dim3(256), [&] {
    rb_act_dropout_bwd(h.data(), g.data(), dh_slot.data(), n, 0, 1, 0, 0, &key, threshold, 1.25f);
  });
  for (size_t i = 0; i < n; ++i)
    want_dh[i] = g[i] * (by_value[i] != 0.0f ? 1.25f : 0.0f) * (h[i] > 0.0f ? 1.0f : 0.0f);
  report(dh_value == want_dh && dh_value == dh_slot,
         "activation dropout backward: g times the mask and ReLU's gradient, key from memory",
         dh_value == want_dh ? "key from memory differs" : "differs from the plain loop");
  // The dropout with its residual sum: rb_dropout's mask, then + r, rounded as the two ops are;
  // the key from memory as by value.
  auto r = random_values(n, 31);
  std::vector<float> add_value(n), add_slot(n), want(n);
  for (size_t i = 0; i < n; ++i) want[i] = by_value[i] + r[i];
  rb_launch(dim3(blocks), dim3(256), [&] {
    rb_dropout_add(x.data(), r.data(), add_value.data(), n, (unsigned int)key,
                   (unsigned int)(key >> 32), nullptr, threshold, 1.25f);
  });
  rb_launch(dim3(blocks), dim3(256), [&] {
    rb_dropout_add(x.data(), r.data(), add_slot.data(), n, 0, 0, &key, threshold, 1.25f);
  });
  size_t first_bad = n;
  for (size_t i = 0; i < n && first_bad == n; ++i)
    if (add_value[i] != want[i]) first_bad = i;
  std::snprintf(detail, sizeof detail, "element %zu differs from the dropout plus r", first_bad);
  report(first_bad == n, "dropout with a residual sum equals the dropout plus the residual",
         detail);
  report(add_value == add_slot, "dropout with a residual sum: key from memory equals key by value",
         "the two differ");
}

// The attention weights (one warp per row, warp shuffles for the row's max and sum): y against a
// plain softmax of s·scale + bias, and the forward and backward passes with the dropout key read
// from memory equal to the key by value.
static void check_attention_probs() {
  char detail[200] = "";
  const int b = 2, h = 2, q = 3, n = 40, rows = b * h * q;
  const float scale = 0.35f, dscale = 1.25f;
  const unsigned int threshold = 52429;
  const unsigned long long key = 0x0fedcba987654321ull;
  auto s = random_values(size_t(rows) * n, 40);
  std::vector<float> bias(size_t(b) * q * n, 0.0f);  // [B, 1, Q, n]: causal-like, some -inf
  for (int bb = 0; bb < b; ++bb)
    for (int qq = 0; qq < q; ++qq)
      for (int j = 0; j < n; ++j)
        if (j > n - q + qq) bias[(size_t(bb) * q + qq) * n + j] = -INFINITY;
  std::vector<float> want(size_t(rows) * n);
  for (int r = 0; r < rows; ++r) {
    const float *br = &bias[(size_t(r / (q * h)) * q + r % q) * n];
    float mx = -INFINITY, sum = 0.0f;
    for (int j = 0; j < n; ++j) mx = std::max(mx, s[size_t(r) * n + j] * scale + br[j]);
    for (int j = 0; j < n; ++j) sum += std::exp(s[size_t(r) * n + j] * scale + br[j] - mx);
    for (int j = 0; j < n; ++j)
      want[size_t(r) * n + j] = std::exp(s[size_t(r) * n + j] * scale + br[j] - mx) / sum;
  }
  std::vector<float> p1(want.size()), y1(want.size()), p2(want.size()), y2(want.size());
  unsigned int blocks = (rows + 3) / 4;
  rb_launch(dim3(blocks), dim3(128), [&] {
    rb_attention_probs_fwd(s.data(), bias.data(), p1.data(), y1.data(), rows, n, h, q, b, q,
                           scale, 1, (unsigned int)key, (unsigned int)(key >> 32), nullptr,
                           threshold, dscale);
  });
  rb_launch(dim3(blocks), dim3(128), [&] {
    rb_attention_probs_fwd(s.data(), bias.data(), p2.data(), y2.data(), rows, n, h, q, b, q,
                           scale, 1, 0, 0, &key, threshold, dscale);
  });
  report(close(y1, want, 1e-6f, detail), "attention softmax against a plain softmax", detail);
  report(p1 == p2 && y1 == y2, "attention weights: key from memory equals key by value",
         "the two differ");
  auto dp = random_values(want.size(), 41);
  std::vector<float> ds1(want.size()), ds2(want.size());
  rb_launch(dim3(blocks), dim3(128), [&] {
    rb_attention_probs_bwd(y1.data(), dp.data(), ds1.data(), rows, n, scale, 1,
                           (unsigned int)key, (unsigned int)(key >> 32), nullptr, threshold,
                           dscale);
  });
  rb_launch(dim3(blocks), dim3(128), [&] {
    rb_attention_probs_bwd(y1.data(), dp.data(), ds2.data(), rows, n, scale, 1, 0, 0, &key,
                           threshold, dscale);
  });
  report(ds1 == ds2, "attention backward: key from memory equals key by value", "the two differ");
}

// The layer norm's launcher (nn/cuda/mod.rs `layer_norm`, `layer_norm_backward`): a warp per row
// forward and for the input gradient, then the parameter gradients as column sums over chunks of
// 256 rows (blocks of 32 columns × 8 row lanes) added in order; against loops in double.
static void check_layer_norm(int rows, int d) {
  char detail[200] = "";
  const float eps = 1e-5f;
  const int chunk = 256, chunks = std::max(1, (rows + chunk - 1) / chunk);
  auto x = random_values(size_t(rows) * d, 50);
  for (size_t i = 0; i < x.size(); ++i) x[i] = x[i] * 3.0f + float(i % 5);
  auto w = random_values(d, 51), b = random_values(d, 52), dy = random_values(x.size(), 53);
  std::vector<float> y(x.size()), dx(x.size()), stats(2 * size_t(rows));
  std::vector<float> partials(size_t(chunks) * 2 * d), dwb(2 * size_t(d));
  unsigned int blocks = (rows + 3) / 4;
  rb_launch(dim3(blocks), dim3(128),
            [&] { rb_layer_norm_fwd(x.data(), w.data(), b.data(), y.data(), rows, d, eps); });
  rb_launch(dim3(blocks), dim3(128), [&] {
    rb_layer_norm_bwd_dx(x.data(), w.data(), dy.data(), dx.data(), stats.data(), rows, d, eps);
  });
  rb_launch(dim3((d + 31) / 32, chunks), dim3(32, 8), [&] {
    rb_layer_norm_bwd_params(x.data(), dy.data(), stats.data(), partials.data(), rows, d, chunk);
  });
  rb_launch(dim3((2 * d + 255) / 256), dim3(256),
            [&] { rb_sum_partials(partials.data(), dwb.data(), chunks, 2 * d); });
  std::vector<float> want_y(x.size()), want_dx(x.size());
  std::vector<double> dw(d, 0.0), db(d, 0.0);
  for (int r = 0; r < rows; ++r) {
    const float *xr = &x[size_t(r) * d];
    const float *gr = &dy[size_t(r) * d];
    double mean = 0.0, var = 0.0, a = 0.0, c = 0.0;
    for (int j = 0; j < d; ++j) mean += xr[j];
    mean /= d;
    for (int j = 0; j < d; ++j) var += (xr[j] - mean) * (xr[j] - mean);
    double rstd = 1.0 / std::sqrt(var / d + eps);
    for (int j = 0; j < d; ++j) {
      double xh = (xr[j] - mean) * rstd;
      want_y[size_t(r) * d + j] = float(xh * w[j] + b[j]);
      a += double(gr[j]) * w[j];
      c += double(gr[j]) * w[j] * xh;
      dw[j] += double(gr[j]) * xh;
      db[j] += gr[j];
    }
    for (int j = 0; j < d; ++j) {
      double xh = (xr[j] - mean) * rstd;
      want_dx[size_t(r) * d + j] = float((double(gr[j]) * w[j] - a / d - xh * c / d) * rstd);
    }
  }
  std::vector<float> got_dw(dwb.begin(), dwb.begin() + d), got_db(dwb.begin() + d, dwb.end());
  std::vector<float> want_dw(dw.begin(), dw.end()), want_db(db.begin(), db.end());
  char name[120];
  std::snprintf(name, sizeof name, "layer norm [%d, %d]: output", rows, d);
  report(close(y, want_y, 1e-5f, detail), name, detail);
  std::snprintf(name, sizeof name, "layer norm [%d, %d]: input gradient", rows, d);
  report(close(dx, want_dx, 1e-4f, detail), name, detail);
  std::snprintf(name, sizeof name, "layer norm [%d, %d]: weight and bias gradients", rows, d);
  bool params_ok = close(got_dw, want_dw, 1e-4f, detail) && close(got_db, want_db, 1e-4f, detail);
  report(params_ok, name, detail);
}

// The softmax cross-entropy kernels and the catalog loss's row pass (a block of 256 per row)
// against loops in double: per-row losses and the logits' gradient g·(softmax − onehot), zeros
// and loss 0 where the target is 0, NaN where it is past the catalog.
static void check_cross_entropy(int rows, int c) {
  char detail[200] = "";
  auto x = random_values(size_t(rows) * c, 60);
  for (auto &v : x) v *= 4.0f;
  auto g = random_values(rows, 61);
  std::vector<unsigned int> t(rows);
  for (int r = 0; r < rows; ++r)
    t[r] = r % 7 == 3 ? 0u : (r % 11 == 5 ? unsigned(c) + 2u : 1u + unsigned(r * 37) % unsigned(c - 1));
  std::vector<float> ce(rows), dx(x.size()), dz(x.size()), losses(rows);
  rb_launch(dim3(rows), dim3(256), [&] { rb_softmax_ce_fwd(x.data(), t.data(), ce.data(), rows, c); });
  rb_launch(dim3(rows), dim3(256),
            [&] { rb_softmax_ce_bwd(x.data(), t.data(), g.data(), dx.data(), rows, c); });
  rb_launch(dim3(rows), dim3(256), [&] {
    rb_catalog_rows(x.data(), t.data(), g.data(), dz.data(), losses.data(), rows, c);
  });
  std::vector<float> want_ce(rows), want_dx(x.size()), want_losses(rows);
  for (int r = 0; r < rows; ++r) {
    const float *xr = &x[size_t(r) * c];
    if (t[r] == 0u || t[r] >= unsigned(c)) {
      float fill = t[r] == 0u ? 0.0f : NAN;
      want_ce[r] = fill;
      want_losses[r] = fill;
      for (int j = 0; j < c; ++j) want_dx[size_t(r) * c + j] = fill;
      continue;
    }
    double mx = -INFINITY, s = 0.0;
    for (int j = 0; j < c; ++j) mx = std::max(mx, double(xr[j]));
    for (int j = 0; j < c; ++j) s += std::exp(xr[j] - mx);
    double lse = mx + std::log(s);
    want_ce[r] = float(lse - xr[t[r]]);
    want_losses[r] = float((lse - xr[t[r]]) * g[r]);
    for (int j = 0; j < c; ++j)
      want_dx[size_t(r) * c + j] =
          float(g[r] * (std::exp(xr[j] - lse) - (unsigned(j) == t[r] ? 1.0 : 0.0)));
  }
  char name[120];
  std::snprintf(name, sizeof name, "cross-entropy [%d, %d]: losses", rows, c);
  report(close(ce, want_ce, 1e-5f, detail), name, detail);
  std::snprintf(name, sizeof name, "cross-entropy [%d, %d]: logits gradient", rows, c);
  report(close(dx, want_dx, 1e-5f, detail), name, detail);
  std::snprintf(name, sizeof name, "catalog rows [%d, %d]: weighted losses", rows, c);
  report(close(losses, want_losses, 1e-5f, detail), name, detail);
  std::snprintf(name, sizeof name, "catalog rows [%d, %d]: logits gradient", rows, c);
  report(close(dz, want_dx, 1e-5f, detail), name, detail);
  // The segmented form (two launches over (row, segment) blocks): segments of 64 (the last
  // partial), 100 (fewer logits than threads: some threads have none), 512 and the whole row.
  for (int seg : {64, 100, 512, c}) {
    int segments = (c + seg - 1) / seg;
    std::vector<float> parts(size_t(rows) * segments * 2, -7.0f), dz2(x.size(), -7.0f),
        losses2(rows, -7.0f);
    rb_launch(dim3(rows, segments), dim3(256),
              [&] { rb_catalog_row_parts(x.data(), t.data(), parts.data(), rows, c, seg); });
    rb_launch(dim3(rows, segments), dim3(256), [&] {
      rb_catalog_row_grads(x.data(), t.data(), g.data(), parts.data(), dz2.data(), losses2.data(),
                           rows, c, seg);
    });
    std::snprintf(name, sizeof name, "catalog row segments of %d [%d, %d]: weighted losses", seg,
                  rows, c);
    report(close(losses2, want_losses, 1e-5f, detail), name, detail);
    std::snprintf(name, sizeof name, "catalog row segments of %d [%d, %d]: logits gradient", seg,
                  rows, c);
    report(close(dz2, want_dx, 1e-5f, detail), name, detail);
  }
}

// The segmented catalog row pass against the one-block pass (rb_catalog_rows) on logits with NaN
// and −∞: a NaN anywhere in a row makes its loss and gradient NaN, and a −∞ (the first logit a
// thread sees, or one later) adds nothing, on both. Segments of 64 leave the last segment 44
// logits (at most one a thread), 100 give every thread at most one.
static void check_catalog_segments_with_nan_and_infinity() {
  char detail[200] = "";
  const int rows = 5, c = 300;
  auto x = random_values(size_t(rows) * c, 62);
  auto g = random_values(rows, 63);
  x[0 * c + 299] = NAN;        // row 0: NaN in the last, short segment
  x[1 * c + 17] = -INFINITY;   // row 1: −∞ after finite logits of its thread
  x[2 * c + 0] = -INFINITY;    // row 2: −∞ first for thread 0 of segment 0,
  x[2 * c + 192] = -INFINITY;  //        of segment 3 of 64,
  x[2 * c + 200] = -INFINITY;  //        and of segment 2 of 100
  x[3 * c + 5] = NAN;          // row 3: NaN early
  std::vector<unsigned int> t = {3u, 4u, 5u, 6u, 7u};  // row 4: finite, the control
  std::vector<float> dz(x.size()), losses(rows);
  rb_launch(dim3(rows), dim3(256), [&] {
    rb_catalog_rows(x.data(), t.data(), g.data(), dz.data(), losses.data(), rows, c);
  });
  bool nan_where_expected = std::isnan(losses[0]) && std::isnan(losses[3]) &&
                            std::isfinite(losses[1]) && std::isfinite(losses[2]) &&
                            std::isfinite(losses[4]);
  report(nan_where_expected, "catalog rows with NaN and -inf: NaN losses exactly where a NaN is",
         "");
  for (int seg : {64, 100}) {
    int segments = (c + seg - 1) / seg;
    std::vector<float> parts(size_t(rows) * segments * 2), dz2(x.size()), losses2(rows);
    rb_launch(dim3(rows, segments), dim3(256),
              [&] { rb_catalog_row_parts(x.data(), t.data(), parts.data(), rows, c, seg); });
    rb_launch(dim3(rows, segments), dim3(256), [&] {
      rb_catalog_row_grads(x.data(), t.data(), g.data(), parts.data(), dz2.data(), losses2.data(),
                           rows, c, seg);
    });
    char name[120];
    std::snprintf(name, sizeof name,
                  "catalog row segments of %d with NaN and -inf: losses as rb_catalog_rows", seg);
    report(close(losses2, losses, 1e-5f, detail), name, detail);
    std::snprintf(name, sizeof name,
                  "catalog row segments of %d with NaN and -inf: gradient as rb_catalog_rows", seg);
    report(close(dz2, dz, 1e-5f, detail), name, detail);
  }
}

// Row-wise kernels: a linear layer's bias and a timeline mask's row scale (one thread per
// element) against x + b and x·m bit for bit, and the softmax forward and backward (one warp per
// row, some scores −inf) against plain loops.
static void check_row_kernels() {
  char detail[200] = "";
  const int rows = 37, cols = 70;
  const unsigned long long n = (unsigned long long)rows * cols;
  auto x = random_values(n, 70), b = random_values(cols, 71), m = random_values(rows, 72);
  for (int r = 0; r < rows; r += 3) m[r] = 0.0f;  // masked rows
  std::vector<float> got(n), want(n);
  const unsigned int blocks = (unsigned int)((n + 255) / 256);
  rb_launch(dim3(blocks), dim3(256), [&] { rb_bias_add(x.data(), b.data(), got.data(), n, cols); });
  for (size_t i = 0; i < n; ++i) want[i] = x[i] + b[i % cols];
  report(got == want, "bias add", "differs from x + b");
  rb_launch(dim3(blocks), dim3(256), [&] { rb_row_scale(x.data(), m.data(), got.data(), n, cols); });
  for (size_t i = 0; i < n; ++i) want[i] = x[i] * m[i / cols];
  report(got == want, "row scale (timeline mask)", "differs from x times its row's factor");

  auto s = x;
  for (int r = 0; r < rows; ++r)
    for (int j = r % 5; j < cols; j += 7) s[size_t(r) * cols + j] = -INFINITY;
  auto dy = random_values(n, 73);
  std::vector<float> y(n), dx(n), want_dx(n);
  rb_launch(dim3((rows + 3) / 4), dim3(128), [&] { rb_softmax_fwd(s.data(), y.data(), rows, cols); });
  rb_launch(dim3((rows + 3) / 4), dim3(128),
            [&] { rb_softmax_bwd(y.data(), dy.data(), dx.data(), rows, cols); });
  for (int r = 0; r < rows; ++r) {
    const float *sr = &s[size_t(r) * cols];
    double mx = -INFINITY, sum = 0.0, dot = 0.0;
    for (int j = 0; j < cols; ++j) mx = std::max(mx, double(sr[j]));
    for (int j = 0; j < cols; ++j) sum += std::exp(double(sr[j]) - mx);
    for (int j = 0; j < cols; ++j) want[size_t(r) * cols + j] = float(std::exp(double(sr[j]) - mx) / sum);
    for (int j = 0; j < cols; ++j) dot += double(dy[size_t(r) * cols + j]) * y[size_t(r) * cols + j];
    for (int j = 0; j < cols; ++j) {
      size_t i = size_t(r) * cols + j;
      want_dx[i] = float(y[i] * (dy[i] - dot));
    }
  }
  report(close(y, want, 1e-5f, detail), "softmax forward (masked scores)", detail);
  report(close(dx, want_dx, 1e-5f, detail), "softmax backward", detail);
}

// Position rows added to sessions and their table's gradient: against plain loops, bit for bit
// (one addition per element; the gradient summed in batch order as the loop does).
static void check_position_rows() {
  const int b = 5, l = 7, d = 6, n_rows = 9;
  const unsigned long long n = (unsigned long long)b * l * d;
  auto x = random_values(n, 80), t = random_values(size_t(n_rows) * d, 81), g = random_values(n, 82);
  const std::vector<unsigned int> rows = {8, 0, 3, 1, 7, 2, 5};
  std::vector<float> out(n), want(n), dt(size_t(n_rows) * d, 0.0f), want_dt(dt.size(), 0.0f);
  rb_launch(dim3((unsigned int)((n + 255) / 256)), dim3(256),
            [&] { rb_add_position_rows(x.data(), t.data(), rows.data(), out.data(), n, l, d); });
  for (int s = 0; s < b; ++s)
    for (int p = 0; p < l; ++p)
      for (int c = 0; c < d; ++c) {
        size_t i = (size_t(s) * l + p) * d + c;
        want[i] = x[i] + t[size_t(rows[p]) * d + c];
      }
  report(out == want, "position rows added to sessions", "differs from x + t[rows]");
  rb_launch(dim3((l * d + 255) / 256), dim3(256),
            [&] { rb_position_rows_grad(g.data(), rows.data(), dt.data(), b, l, d); });
  for (int p = 0; p < l; ++p)
    for (int c = 0; c < d; ++c) {
      float sum = 0.0f;
      for (int s = 0; s < b; ++s) sum += g[(size_t(s) * l + p) * d + c];
      want_dt[size_t(rows[p]) * d + c] = sum;
    }
  report(dt == want_dt, "position rows: the table's gradient",
         "differs from the batch sums in their rows");
}

// The catalog loss's total over its rows (one block): the sum of the row losses over the count of
// positive ones, and 1 / (count · temperature), against a plain loop (the sum's order differs:
// to 1e-6; the count is exact).
static void check_catalog_loss_total() {
  char detail[200] = "";
  for (unsigned long long m : {2ull, 255ull, 5656ull}) {
    auto l = random_values(m, 90 + (unsigned int)m);
    for (size_t i = 0; i < m; i += 3) l[i] = 0.0f;  // ignored rows
    for (auto &v : l) v = std::fabs(v);
    double sum = 0.0, count = 0.0;
    for (float v : l) {
      sum += v;
      count += v > 0.0f ? 1.0 : 0.0;
    }
    std::vector<float> out(2), want = {float(sum / count), float(1.0 / (count * 0.7))};
    rb_launch(dim3(1), dim3(256), [&] { rb_catalog_loss_total(l.data(), m, 0.7f, out.data()); });
    char name[100];
    std::snprintf(name, sizeof name, "catalog loss total over %llu rows", m);
    report(close(out, want, 1e-6f, detail), name, detail);
  }
}

int main() {
  check_sort(1, 5, 1);
  check_sort(1000, 7, 2);
  check_sort(1024, 1u << 31, 3);
  check_sort(1025, 40, 4);
  check_sort(5000, 300, 5);
  check_sort(3000, 3, 6);
  check_sums(700, 50, 50, 1, 70, false, 20);
  check_sums(1500, 40, 45, 1, 16, false, 21);
  check_sums(1300, 30, 30, 4, 33, true, 22);
  check_run_lengths();
  check_gather(37, 9, 5);
  check_gather_dot(13, 6, 11, 37);
  check_adam();
  check_attention_bias();
  check_key_slots();
  check_attention_probs();
  check_layer_norm(37, 64);
  check_layer_norm(600, 100);
  check_cross_entropy(23, 300);
  check_cross_entropy(9, 1683);
  check_catalog_segments_with_nan_and_infinity();
  check_row_kernels();
  check_position_rows();
  check_catalog_loss_total();
  std::printf("%d failed\n", failures);
  return failures;
}
