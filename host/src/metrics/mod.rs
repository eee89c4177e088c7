//! Offline recommendation metrics compatible with RecTools' `rectools.metrics`.
//!
//! Ports, per metric family (each file cites its RecTools source):
//! - [`classification`]: Recall, Precision, HitRate (`rectools/metrics/classification.py`);
//! - [`ranking`]: MAP, MRR, NDCG in two conventions (`rectools/metrics/ranking.py`);
//! - [`catalog`]: catalog coverage (`rectools/metrics/catalog.py`);
//! - [`popularity`]: AvgRecPopularity (`rectools/metrics/popularity.py`);
//! - [`serendipity`]: Serendipity (`rectools/metrics/serendipity.py`).
//!
//! Inputs use dense `u32` ids: [`Recommendations`] (user, item, 1-based rank) and [`TestSet`]
//! (user, item), plus per-item train interaction counts and the catalog size.
//!
//! **Populations** follow RecTools, which evaluates each family over a different set of users:
//! - recall, precision, hitrate, ndcg, ndcg_rectools, map, mrr: every *test* user (RecTools'
//!   left join `merge_reco(reco, interactions)`); a test user without recommendations scores 0
//!   and counts in the mean; recommended users absent from the test set are ignored;
//! - avg_rec_pop, serendipity: every user with a recommendation at rank ≤ k (a `groupby` over
//!   the recommendation rows), test user or not;
//! - coverage: one number over all recommendations, no per-user values.
//!
//! Means are plain means over the population (NaN when it is empty, like pandas).

pub mod catalog;
pub mod classification;
pub mod data;
pub mod popularity;
pub mod ranking;
pub mod serendipity;
pub mod spec;

use std::collections::BTreeMap;

pub use data::{user_hits, Ranked, Recommendations, TestSet, UserHits};
pub use spec::{parse_metrics, MetricKind, MetricSpec};

/// Errors of metric parsing and metric inputs.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Unknown metric name.
    #[error("unknown metric `{name}` (known: {known})")]
    UnknownMetric {
        /// The name given.
        name: String,
        /// The accepted names.
        known: String,
    },
    /// A metric spec without `@k`.
    #[error("metric `{0}` needs a cut-off, e.g. `{0}@10`")]
    MissingK(String),
    /// A cut-off that is not a positive integer.
    #[error("bad cut-off in `{0}`: k must be a positive integer")]
    BadK(String),
    /// An empty metric list.
    #[error("no metrics given")]
    NoMetrics,
    /// A recommendation with rank 0 (ranks are 1-based).
    #[error("user {user}: item {item} has rank 0 (ranks are 1-based)")]
    ZeroRank {
        /// The user.
        user: u32,
        /// The item.
        item: u32,
    },
    /// The same item recommended twice to one user.
    #[error("user {user}: item {item} is recommended more than once")]
    DuplicateItem {
        /// The user.
        user: u32,
        /// The item.
        item: u32,
    },
    /// Two recommendations of one user share a rank.
    #[error("user {user}: rank {rank} is used more than once")]
    DuplicateRank {
        /// The user.
        user: u32,
        /// The rank.
        rank: u32,
    },
    /// A user given two recommendation lists.
    #[error("user {0} has more than one recommendation list")]
    DuplicateUser(u32),
    /// A catalog-based metric with an empty catalog.
    #[error("`{0}` needs a non-empty catalog (n_catalog_items = 0)")]
    EmptyCatalog(String),
}

/// Per-user values of one metric: `values[i]` belongs to `users[i]` (ascending).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PerUser {
    /// The users of the metric's population, ascending.
    pub users: Vec<u32>,
    /// One value per user.
    pub values: Vec<f64>,
}

impl PerUser {
    /// Mean of the values (NaN when there are none).
    pub fn mean(&self) -> f64 {
        if self.values.is_empty() {
            return f64::NAN;
        }
        self.values.iter().sum::<f64>() / self.values.len() as f64
    }
}

/// Metric results, keyed by [`MetricSpec::key`] (`recall@10`, `ndcg@10`, ...).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Report {
    /// Per-user values (every metric except coverage).
    pub per_user: BTreeMap<String, PerUser>,
    /// Mean over users (coverage: the catalog share).
    pub means: BTreeMap<String, f64>,
}

/// Computes `metrics` for `reco` against `test`.
///
/// `train_popularity[item]` is the item's number of train interactions (items beyond the slice
/// count 0); `n_catalog_items` is the number of recommendable items (coverage and serendipity
/// need it to be positive).
pub fn compute(
    metrics: &[MetricSpec],
    reco: &Recommendations,
    test: &TestSet,
    train_popularity: &[u32],
    n_catalog_items: usize,
) -> Result<Report, MetricsError> {
    if let Some(spec) = metrics.iter().find(|s| {
        n_catalog_items == 0 && matches!(s.kind, MetricKind::Coverage | MetricKind::Serendipity)
    }) {
        return Err(MetricsError::EmptyCatalog(spec.key()));
    }
    let hits = user_hits(reco, test);
    let test_users: Vec<u32> = hits.iter().map(|h| h.user).collect();
    let mut report = Report::default();
    for spec in metrics {
        let k = spec.k;
        let per_hits = |f: fn(&UserHits, usize) -> f64| PerUser {
            users: test_users.clone(),
            values: hits.iter().map(|h| f(h, k)).collect(),
        };
        let per_user = match spec.kind {
            MetricKind::Recall => per_hits(classification::recall),
            MetricKind::Precision => per_hits(classification::precision),
            MetricKind::HitRate => per_hits(classification::hit_rate),
            MetricKind::Ndcg => per_hits(ranking::ndcg),
            MetricKind::NdcgRecTools => per_hits(ranking::ndcg_rectools),
            MetricKind::Map => per_hits(ranking::average_precision),
            MetricKind::Mrr => per_hits(ranking::reciprocal_rank),
            MetricKind::AvgRecPop => popularity::avg_rec_popularity(reco, train_popularity, k),
            MetricKind::Serendipity => {
                serendipity::serendipity(reco, test, train_popularity, n_catalog_items, k)
            }
            MetricKind::Coverage => {
                let value = catalog::catalog_coverage(reco, k, n_catalog_items);
                report.means.insert(spec.key(), value);
                continue;
            }
        };
        report.means.insert(spec.key(), per_user.mean());
        report.per_user.insert(spec.key(), per_user);
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
