//! Pre-training and fine-tuning of Vision Transformers with burn.
//!
//! The models and training loop land with the pre-training issue; the crate exists now so that
//! the workspace's dependency direction (`trainer` -> `pipeline` -> `schemas`) is fixed from the
//! start and the trainer reads shards through `pipeline`'s reader only.

pub use pipeline::shard::ShardReader;
