//! negative_sampler (to be written).
