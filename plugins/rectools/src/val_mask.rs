//! val_mask (to be written).
