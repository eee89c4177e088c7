//! lightning (to be written).
