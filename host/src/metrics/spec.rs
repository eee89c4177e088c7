//! Metric names and `@k` cut-offs: parsing `"recall@10,ndcg@10"` into [`MetricSpec`]s.
//!
//! The names map onto RecTools' metric classes (`rectools/metrics/__init__.py`): `recall` →
//! `Recall`, `precision` → `Precision`, `hitrate` → `HitRate`, `ndcg` → `NDCG(divide_by_achievable=True)`,
//! `ndcg_rectools` → `NDCG()` (the RecTools default), `map` → `MAP()`, `mrr` → `MRR`,
//! `coverage` → `CatalogCoverage(normalize=True)`, `avg_rec_pop` → `AvgRecPopularity()`,
//! `serendipity` → `Serendipity`.

use std::fmt;

use super::MetricsError;

/// Which metric to compute (see the module docs of [`crate::metrics`] for exact definitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetricKind {
    /// Hits in the top k / number of the user's test items.
    Recall,
    /// Hits in the top k / k.
    Precision,
    /// 1 if the top k holds a hit, else 0.
    HitRate,
    /// Standard NDCG: ideal DCG of `min(n_relevant, k)` relevant items.
    Ndcg,
    /// RecTools' default NDCG: ideal DCG of `k` relevant items.
    NdcgRecTools,
    /// RecTools' MAP (`divide_by_k=False`): sum of precision@rank over hits / n_relevant.
    Map,
    /// Reciprocal rank of the first hit in the top k.
    Mrr,
    /// Share of the catalog recommended (in some top k) to at least one user.
    Coverage,
    /// Mean train popularity of the recommended items.
    AvgRecPop,
    /// RecTools' serendipity: relevance × unexpectedness.
    Serendipity,
}

impl MetricKind {
    /// Every kind, in report order.
    pub const ALL: [MetricKind; 10] = [
        MetricKind::Recall,
        MetricKind::Precision,
        MetricKind::HitRate,
        MetricKind::Ndcg,
        MetricKind::NdcgRecTools,
        MetricKind::Map,
        MetricKind::Mrr,
        MetricKind::Coverage,
        MetricKind::AvgRecPop,
        MetricKind::Serendipity,
    ];

    /// The canonical (lower-case) name used in specs and report keys.
    pub fn name(self) -> &'static str {
        match self {
            MetricKind::Recall => "recall",
            MetricKind::Precision => "precision",
            MetricKind::HitRate => "hitrate",
            MetricKind::Ndcg => "ndcg",
            MetricKind::NdcgRecTools => "ndcg_rectools",
            MetricKind::Map => "map",
            MetricKind::Mrr => "mrr",
            MetricKind::Coverage => "coverage",
            MetricKind::AvgRecPop => "avg_rec_pop",
            MetricKind::Serendipity => "serendipity",
        }
    }

    /// Parses a name, case-insensitively (`hit_rate` is accepted for `hitrate`).
    pub fn from_name(name: &str) -> Option<MetricKind> {
        let lower = name.trim().to_ascii_lowercase();
        let lower = if lower == "hit_rate" {
            "hitrate".to_string()
        } else {
            lower
        };
        MetricKind::ALL.into_iter().find(|k| k.name() == lower)
    }
}

/// One metric at one cut-off `k` (k ≥ 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetricSpec {
    /// The metric.
    pub kind: MetricKind,
    /// Number of top recommendations considered.
    pub k: usize,
}

impl MetricSpec {
    /// Creates a spec; `k` must be positive.
    pub fn new(kind: MetricKind, k: usize) -> Result<Self, MetricsError> {
        if k == 0 {
            return Err(MetricsError::BadK(format!("{}@0", kind.name())));
        }
        Ok(Self { kind, k })
    }

    /// The report key, e.g. `recall@10`.
    pub fn key(&self) -> String {
        format!("{}@{}", self.kind.name(), self.k)
    }
}

impl fmt::Display for MetricSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.kind.name(), self.k)
    }
}

impl std::str::FromStr for MetricSpec {
    type Err = MetricsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (name, k) = s
            .rsplit_once('@')
            .ok_or_else(|| MetricsError::MissingK(s.to_string()))?;
        let kind = MetricKind::from_name(name).ok_or_else(|| MetricsError::UnknownMetric {
            name: name.trim().to_string(),
            known: MetricKind::ALL.map(MetricKind::name).join(", "),
        })?;
        let k = k
            .trim()
            .parse::<usize>()
            .map_err(|_| MetricsError::BadK(s.to_string()))?;
        if k == 0 {
            return Err(MetricsError::BadK(s.to_string()));
        }
        Ok(Self { kind, k })
    }
}

/// Parses a comma-separated list such as `"recall@10, NDCG@10,mrr@10"`.
///
/// Names are case-insensitive and every entry needs `@k` with `k ≥ 1`. Empty entries are
/// skipped, repeated specs are kept once (first occurrence order), and an empty list is an
/// error.
pub fn parse_metrics(list: &str) -> Result<Vec<MetricSpec>, MetricsError> {
    let mut out: Vec<MetricSpec> = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let spec: MetricSpec = part.parse()?;
        if !out.contains(&spec) {
            out.push(spec);
        }
    }
    if out.is_empty() {
        return Err(MetricsError::NoMetrics);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_case_insensitively() {
        let specs =
            parse_metrics(" Recall@10,NDCG@5 , ndcg_rectools@5,hit_rate@1,recall@10,").unwrap();
        let keys: Vec<String> = specs.iter().map(MetricSpec::key).collect();
        assert_eq!(
            keys,
            ["recall@10", "ndcg@5", "ndcg_rectools@5", "hitrate@1"]
        );
        for kind in MetricKind::ALL {
            let spec: MetricSpec = format!("{}@3", kind.name().to_uppercase()).parse().unwrap();
            assert_eq!(spec, MetricSpec::new(kind, 3).unwrap());
            assert_eq!(spec.to_string(), spec.key());
        }
    }

    #[test]
    fn rejects_bad_specs() {
        assert!(matches!(
            parse_metrics("recall"),
            Err(MetricsError::MissingK(_))
        ));
        assert!(matches!(
            parse_metrics("recall@0"),
            Err(MetricsError::BadK(_))
        ));
        assert!(matches!(
            parse_metrics("recall@x"),
            Err(MetricsError::BadK(_))
        ));
        assert!(matches!(
            parse_metrics("auc@10"),
            Err(MetricsError::UnknownMetric { .. })
        ));
        assert!(matches!(parse_metrics(" , "), Err(MetricsError::NoMetrics)));
        assert!(MetricSpec::new(MetricKind::Map, 0).is_err());
    }
}
