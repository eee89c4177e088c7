//! recblocks host: assembles models from specs and the registry, reads interaction logs, trains,
//! evaluates, recommends, and saves/loads model artifacts. The `recblocks` binary is a thin CLI
//! over this library.

pub mod data;
