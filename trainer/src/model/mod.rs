//! What a forward pass needs: the ViT encoder and its initialization, the pre-training models
//! (BEiT, SplitMask) with their masks and losses, the on-device tokenizer that makes their
//! targets, and the fine-tuning classifier. Nothing here reads files or draws data.

pub mod beit;
pub mod classifier;
pub mod fused;
pub mod init;
pub mod losses;
pub mod masking;
pub mod objective;
pub mod splitmask;
pub mod tokenizer;
pub mod vit;
