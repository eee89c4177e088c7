//! pos_encoding (to be written).
