//! Offline evaluation: split the log, fit on the train part, recommend top-k for every test user
//! with viewed items filtered, and compute metrics (optionally beside a popularity baseline
//! computed on the same split).
//!
//! Splits: leave-last-out per user (the last interaction by time, ties broken by row order, is
//! the test item; users with no train interaction are not evaluated), or a global time split
//! (RecTools' `TimeRangeSplitter`-style: test = interactions after the cut, for users and items
//! seen before it, already-seen pairs removed). A test item the model does not know counts as a
//! miss; a test user the model cannot recommend for gets no recommendations (zeros).

use std::{collections::HashMap, time::Instant};

use recblocks_core::{ModelSpec, Registry};
use serde::Serialize;

use crate::{
    data::{leave_last_out, time_split, Interactions, Split, TimeCut},
    error::HostError,
    metrics::{self, MetricSpec, Recommendations, TestSet},
    model::{Model, TrainData},
    recommend::{OnUnsupported, RecommendRequest},
    FitOptions, Result,
};

/// How to split the log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SplitKind {
    /// Leave the last interaction of each user out.
    LastOut,
    /// Global time split.
    Time(TimeCut),
}

impl SplitKind {
    /// Parses `last`, `time:YYYY-MM-DD[...]`, `time:UNIX_SECONDS` or `time:FRACTION` (in (0, 1)).
    pub fn parse(s: &str) -> std::result::Result<SplitKind, String> {
        if s == "last" {
            return Ok(SplitKind::LastOut);
        }
        let Some(rest) = s.strip_prefix("time:") else {
            return Err(format!(
                "unknown split `{s}`; use `last`, `time:DATE` (ISO-8601 or unix seconds) or \
                 `time:FRACTION` (e.g. time:0.2 puts the latest 20% of interactions in test)"
            ));
        };
        if let Ok(f) = rest.parse::<f64>() {
            if f > 0.0 && f < 1.0 {
                return Ok(SplitKind::Time(TimeCut::Fraction(f)));
            }
            if rest.chars().all(|c| c.is_ascii_digit()) {
                return rest
                    .parse::<i64>()
                    .map(|t| SplitKind::Time(TimeCut::Date(t)))
                    .map_err(|e| e.to_string());
            }
            return Err(format!(
                "split `{s}`: a fraction must be in (0, 1), found {f}"
            ));
        }
        crate::data::parse_datetime(rest)
            .map(|t| SplitKind::Time(TimeCut::Date(t)))
            .ok_or_else(|| {
                format!("split `{s}`: expected an ISO-8601 date, unix seconds or a fraction")
            })
    }
}

/// Evaluation settings.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// The split.
    pub split: SplitKind,
    /// Recommendations per user.
    pub k: usize,
    /// Metrics to report (their own `@k`).
    pub metrics: Vec<MetricSpec>,
    /// Also evaluate a popularity baseline on the same split.
    pub baseline_popular: bool,
    /// Fit options.
    pub fit: FitOptions,
}

/// The evaluation report (`evaluate --json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Metric means, keyed `recall@10`, `ndcg@10`, ...
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// The popularity baseline's metrics, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_popular: Option<std::collections::BTreeMap<String, f64>>,
    /// Trainable parameters.
    pub n_params: usize,
    /// Seconds spent in `fit` (data preparation, training, validation).
    pub fit_seconds: f64,
    /// Training seconds of each epoch.
    pub epoch_seconds: Vec<f64>,
    /// The median milliseconds of a training step in each epoch
    /// ([`EpochLog::step_ms_median`](crate::train::fit::EpochLog::step_ms_median)).
    pub step_ms_median: Vec<Option<f64>>,
    /// Mean training loss of each epoch (the `train_loss` column of `train_log.csv`).
    pub train_loss: Vec<f64>,
    /// Seconds to recommend for every test user.
    pub recommend_seconds: f64,
    /// Users evaluated.
    pub n_test_users: usize,
    /// Test interactions.
    pub n_test_interactions: usize,
    /// Train interactions.
    pub n_train_interactions: usize,
    /// Optimizer steps that replayed a captured CUDA graph (`--cuda-graph`; 0 otherwise, or when
    /// the capture failed).
    pub captured_steps: u64,
    /// On a CUDA device: the driver's high-water marks of device memory during `fit` (from the
    /// process's start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_memory_fit: Option<DeviceMemoryPeak>,
    /// On a CUDA device: the same during the recommendations for the test users.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_memory_recommend: Option<DeviceMemoryPeak>,
    /// The resolved spec.
    pub spec: ModelSpec,
}

/// Peak device memory of a phase, in MiB (the CUDA driver's high-water marks: the default memory
/// pool, where candle allocates, plus the memory of CUDA graphs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DeviceMemoryPeak {
    /// Memory in use by allocations at its highest.
    pub used_mib: f64,
    /// Memory the pools held from the device at their highest.
    pub reserved_mib: f64,
}

/// The device's memory peaks since the last reset, then (`reset`) a reset so that the next phase
/// is measured on its own; `None` off CUDA devices and on a CUDA device without memory pools
/// (whose allocations the driver's pool statistics do not count).
fn device_peak(device: &candle_core::Device, reset: bool) -> Result<Option<DeviceMemoryPeak>> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(dev) = device {
        use recblocks_core::nn::cuda::memory;
        if !dev.cuda_stream().context().has_async_alloc() {
            return Ok(None);
        }
        let peak = memory::peak(dev)?;
        if reset {
            memory::reset_peak(dev)?;
        }
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        return Ok(Some(DeviceMemoryPeak {
            used_mib: mib(peak.used_high),
            reserved_mib: mib(peak.reserved_high),
        }));
    }
    let _ = (device, reset);
    Ok(None)
}

/// Splits `data`, fits `spec` on the train part and evaluates it; returns the report and the
/// fitted model.
pub fn evaluate(
    spec: ModelSpec,
    data: TrainData<'_>,
    registry: &Registry,
    opts: &EvalOptions,
) -> Result<(EvalReport, Model)> {
    let split = match opts.split {
        SplitKind::LastOut => leave_last_out(data.interactions),
        SplitKind::Time(cut) => time_split(data.interactions, cut)?,
    };
    if split.train.is_empty() {
        return Err(HostError::TrainingData(
            "the split left no interaction to train on: for a time split, choose a later date or \
             a larger fraction"
                .into(),
        ));
    }
    if split.test.is_empty() {
        return Err(HostError::TrainingData(
            "the split left no test interaction to evaluate on".into(),
        ));
    }
    let started = Instant::now();
    let model = Model::fit(
        spec,
        TrainData {
            interactions: &split.train,
            item_features: data.item_features,
        },
        registry,
        &opts.fit,
    )?;
    let fit_seconds = started.elapsed().as_secs_f64();
    let peak_fit = device_peak(&model.net.device, true)?;

    let test_users = distinct_users(&split.test);
    let started = Instant::now();
    let reco = model.recommend(
        &split.train,
        &RecommendRequest {
            users: Some(&test_users),
            k: opts.k,
            filter_viewed: true,
            items_to_recommend: None,
            on_unsupported: OnUnsupported::Ignore,
        },
    )?;
    let recommend_seconds = started.elapsed().as_secs_f64();
    let peak_recommend = device_peak(&model.net.device, false)?;

    let ids = IdSpace::new(&split);
    let lists = group_lists(
        reco.rows
            .iter()
            .map(|r| (r.user_id.as_str(), r.item_id.as_str())),
        &ids,
    );
    let n_catalog = model.item_ids.len() - model.n_extra_tokens;
    let metrics = score(&opts.metrics, lists, &split, n_catalog)?;
    let baseline_popular = if opts.baseline_popular {
        let lists = popular_lists(&split, &test_users, opts.k, &ids);
        Some(score(&opts.metrics, lists, &split, n_catalog)?)
    } else {
        None
    };
    let report = EvalReport {
        metrics,
        baseline_popular,
        n_params: model.n_params(),
        fit_seconds,
        epoch_seconds: model.train_log.iter().map(|e| e.seconds).collect(),
        step_ms_median: model.train_log.iter().map(|e| e.step_ms_median).collect(),
        train_loss: model.train_log.iter().map(|e| e.train_loss).collect(),
        recommend_seconds,
        n_test_users: test_users.len(),
        n_test_interactions: split.test.len(),
        n_train_interactions: split.train.len(),
        captured_steps: model.training.captured_steps,
        device_memory_fit: peak_fit,
        device_memory_recommend: peak_recommend,
        spec: model.net.spec.clone(),
    };
    Ok((report, model))
}

/// External ids → the dense indices of the split's (shared) id tables.
struct IdSpace<'a> {
    users: HashMap<&'a str, u32>,
    items: HashMap<&'a str, u32>,
}

impl<'a> IdSpace<'a> {
    fn new(split: &'a Split) -> Self {
        IdSpace {
            users: split.train.user_index(),
            items: split.train.item_index(),
        }
    }
}

fn distinct_users(log: &Interactions) -> Vec<String> {
    let mut seen = vec![false; log.n_users()];
    let mut out = Vec::new();
    for &u in &log.users {
        if !std::mem::replace(&mut seen[u as usize], true) {
            out.push(log.user_ids[u as usize].clone());
        }
    }
    out
}

fn group_lists<'a>(
    rows: impl Iterator<Item = (&'a str, &'a str)>,
    ids: &IdSpace<'_>,
) -> Vec<(u32, Vec<u32>)> {
    let mut lists: Vec<(u32, Vec<u32>)> = Vec::new();
    for (user, item) in rows {
        let (Some(&u), Some(&i)) = (ids.users.get(user), ids.items.get(item)) else {
            continue;
        };
        match lists.last_mut() {
            Some((last, items)) if *last == u => items.push(i),
            _ => lists.push((u, vec![i])),
        }
    }
    lists
}

/// The most popular train items (by interaction count, ties by first appearance) not yet seen
/// by each user.
fn popular_lists(
    split: &Split,
    users: &[String],
    k: usize,
    ids: &IdSpace<'_>,
) -> Vec<(u32, Vec<u32>)> {
    let counts = item_counts(&split.train);
    let mut order: Vec<u32> = (0..counts.len() as u32)
        .filter(|&i| counts[i as usize] > 0)
        .collect();
    order.sort_by_key(|&i| std::cmp::Reverse(counts[i as usize]));
    let mut seen: HashMap<u32, std::collections::HashSet<u32>> = HashMap::new();
    for r in 0..split.train.len() {
        seen.entry(split.train.users[r])
            .or_default()
            .insert(split.train.items[r]);
    }
    let empty = std::collections::HashSet::new();
    users
        .iter()
        .filter_map(|u| ids.users.get(u.as_str()).copied())
        .map(|u| {
            let viewed = seen.get(&u).unwrap_or(&empty);
            let items = order
                .iter()
                .copied()
                .filter(|i| !viewed.contains(i))
                .take(k)
                .collect();
            (u, items)
        })
        .collect()
}

fn item_counts(log: &Interactions) -> Vec<u32> {
    let mut counts = vec![0u32; log.n_items()];
    for &i in &log.items {
        counts[i as usize] += 1;
    }
    counts
}

fn score(
    specs: &[MetricSpec],
    lists: Vec<(u32, Vec<u32>)>,
    split: &Split,
    n_catalog: usize,
) -> Result<std::collections::BTreeMap<String, f64>> {
    let reco =
        Recommendations::from_ranked_lists(lists).map_err(|e| HostError::Other(e.to_string()))?;
    let test = TestSet::from_pairs(
        split
            .test
            .users
            .iter()
            .zip(&split.test.items)
            .map(|(&u, &i)| (u, i)),
    );
    let popularity = item_counts(&split.train);
    let report = metrics::compute(specs, &reco, &test, &popularity, n_catalog)
        .map_err(|e| HostError::Other(e.to_string()))?;
    Ok(report.means)
}
