//! layers (to be written).
