//! Training runs: the training engine both loops share, the optimizer and learning-rate
//! schedule, tensor files, the run folder (`config.json`, `metrics.jsonl`, `results.json`,
//! checkpoints), configuration resolved from the command line and the dataset recipe, loading
//! a finished run's encoder (or a timm export's), and the pre-training and fine-tuning loops.

pub mod config;
pub mod encoder_from_run;
pub mod engine;
pub mod eval_loop;
pub mod finetune;
pub mod optim;
pub mod parallel;
pub mod pretrain;
pub mod run_folder;
pub mod schedule;
pub mod segment;
pub mod tensor_file;
pub mod timm_import;
