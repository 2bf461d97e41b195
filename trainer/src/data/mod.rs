//! Training and evaluation data: a split's rows, cached in RAM or streamed from its shards
//! through a bounded shuffle buffer; image views and augmentation (random resized crop, the
//! paper's strong augmentation, RandAugment, random erasing), mixup / CutMix, segmentation
//! views (image and label map together), and the loader that builds batches ahead of the device.

pub mod augment;
pub mod images;
pub mod loader;
pub mod mixup;
pub mod randaugment;
pub mod seg_augment;
pub mod shuffle;
