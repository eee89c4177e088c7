//! item_net (to be written).
