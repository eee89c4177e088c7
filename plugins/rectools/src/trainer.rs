//! trainer (to be written).
