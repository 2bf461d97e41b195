//! Training runs: the optimizer and learning-rate schedule, checkpoint files, the run folder
//! (`config.json`, `metrics.jsonl`, `results.json`, checkpoints), configuration resolved from
//! the command line and the dataset recipe, loading a pre-trained encoder, and the
//! pre-training and fine-tuning loops.

pub mod checkpoint;
pub mod config;
pub mod finetune;
pub mod optim;
pub mod parallel;
pub mod pretrain;
pub mod pretrained;
pub mod run_folder;
pub mod schedule;
