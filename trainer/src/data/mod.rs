//! Training and evaluation data: a split's rows read from its shards into memory, image views
//! and augmentation (random resized crop, the paper's strong augmentation, RandAugment, random
//! erasing), mixup / CutMix, and the loader that builds batches ahead of the device.

pub mod augment;
pub mod images;
pub mod loader;
pub mod mixup;
pub mod randaugment;
