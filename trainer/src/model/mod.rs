//! What a forward pass needs: the ViT encoder and its initialization, the pre-training
//! methods (the [`objective::Objective`] trait, BEiT, SplitMask, MAE and the [`method`] registry)
//! with their masks and losses, the on-device tokenizer that makes their targets, and the
//! fine-tuning classifier and the segmentation model. Nothing here reads files or draws data.

pub mod beit;
pub mod classifier;
pub mod device_tokenizer;
pub mod dino;
pub mod init;
pub mod losses;
pub mod mae;
pub mod masking;
pub mod method;
pub mod objective;
pub mod resize_positions;
pub mod segmenter;
pub mod splitmask;
pub mod vit;
