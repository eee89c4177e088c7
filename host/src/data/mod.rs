//! Interaction data: reading logs (CSV, Parquet), item features, synthetic data, splits.
