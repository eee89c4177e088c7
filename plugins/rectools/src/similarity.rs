//! similarity (to be written).
