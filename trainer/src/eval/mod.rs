//! Measuring a model on data: top-1 / top-5 accuracy of a classifier, pooled features of a
//! frozen encoder, weighted k-NN, per-layer linear probes, and the frozen-encoder evaluation
//! that `trainer eval` writes to `results.json`; mIoU and pixel accuracy of segmentation.

pub mod accuracy;
pub mod features;
pub mod frozen;
pub mod knn;
pub mod probe;
pub mod segmentation;
