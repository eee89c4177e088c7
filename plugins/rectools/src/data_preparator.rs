//! data_preparator (to be written).
