//! backbone (to be written).
