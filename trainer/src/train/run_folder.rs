//! The run folder every command writes: `config.json` (the resolved configuration, checked on
//! resume), `metrics.jsonl` (one JSON object per logged step) and `checkpoint.safetensors`
//! (parameters, optimizer state and the training state, written atomically).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::FloatDType;
use pipeline::lock::{FolderLock, LOCK_FILE};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::data::images::ImageSet;
use crate::error::{CheckpointError, Error, Result, RunFolderError};
use crate::train::optim::{AdamW, Moments};
use crate::train::parallel::World;
use crate::train::tensor_file::{
    load_exactly, load_tensors, named_params, optimizer_entries, save_tensors, split_optimizer, NamedTensors, STATE_KEY,
};

/// The resolved configuration of the run, written at its start.
pub const CONFIG_FILE: &str = "config.json";
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The model at the best k-NN top-1 of a pre-training run (with `--knn-every`).
pub const BEST_FILE: &str = "best.safetensors";
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Rows a run left out of a damaged shard (one JSON object per line, see [`record_skipped`]).
pub const SKIPPED_FILE: &str = "skipped.jsonl";
/// What `trainer eval` and fine-tuning write at the end of a run.
pub const RESULTS_FILE: &str = "results.json";
/// An LP-FT fine-tuning run's evaluation before its first update.
pub const START_FILE: &str = "start.json";

/// Writes `config.json` into a new run folder, or checks that a resumed run's folder was
/// written by the same configuration (apart from `stop_after`, when to stop). Resuming a
/// folder that holds no run yet starts it, so `--resume` can always be passed. The returned
/// lock keeps any other process out of the folder until it is dropped.
pub fn prepare_run_folder<C: Serialize + DeserializeOwned>(out: &Path, cfg: &C, resume: bool) -> Result<FolderLock> {
    let path = out.join(CONFIG_FILE);
    let folder_err = |message: String| RunFolderError {
        path: path.clone(),
        message,
    };
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // Two trainers on one run folder would interleave checkpoints and metrics.
    let lock = FolderLock::acquire(out, LOCK_FILE, "trainer")?;
    if resume && path.exists() {
        let old: serde_json::Value = read_config(out)?;
        let new = serde_json::to_value(cfg).expect("serializable");
        let diff = diff_fields(&old, &new);
        if !diff.is_empty() {
            return Err(folder_err(format!(
                "the run was started with a different configuration ({}); start a new --out",
                diff.join(", ")
            ))
            .into());
        }
        return Ok(lock);
    }
    if path.exists() {
        return Err(folder_err("already holds a run: pass --resume or choose a new --out".into()).into());
    }
    write_json(&path, cfg)?;
    Ok(lock)
}

/// Adds `set`'s left-out rows to `<run>/skipped.jsonl`, each once (a resumed run meets the same
/// rows again): a run goes on without them rather than stopping hours in.
pub fn record_skipped(run: &Path, set: &ImageSet) -> Result<()> {
    if set.skipped.is_empty() {
        return Ok(());
    }
    let path = run.join(SKIPPED_FILE);
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    let before = text.len();
    for s in &set.skipped {
        let line = serde_json::to_string(s).expect("serializable");
        if !text.lines().any(|l| l == line) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    eprintln!("  (listed in {})", path.display());
    if text.len() > before {
        pipeline::shard::write_atomic(&path, text.as_bytes())?;
    }
    Ok(())
}

/// A digest of a resolved configuration that the nodes of a run compare: every field but
/// when to stop and the paths, which may differ between machines (the vocabulary is named
/// by its digest, the data by its schedule).
pub fn fingerprint<C: Serialize>(cfg: &C) -> u64 {
    use sha2::Digest;
    let mut value = serde_json::to_value(cfg).expect("serializable");
    if let Some(fields) = value.as_object_mut() {
        for path_like in ["stop_after", "out", "data", "vocab", "recipes"] {
            fields.remove(path_like);
        }
    }
    let digest = sha2::Sha256::digest(value.to_string().as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Top-level fields that differ between two configs, ignoring `stop_after`.
fn diff_fields(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (a, b) = (a.as_object().unwrap_or(&empty), b.as_object().unwrap_or(&empty));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| k.as_str() != "stop_after" && a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// Reads `<run>/config.json` as `C`.
pub fn read_config<C: DeserializeOwned>(run: &Path) -> Result<C> {
    read_json(&run.join(CONFIG_FILE))
}

/// Writes `value` as pretty JSON to `<run>/results.json` (atomically).
pub fn write_results<T: Serialize>(run: &Path, value: &T) -> Result<()> {
    write_json(&run.join(RESULTS_FILE), value)
}

/// Reads `<run>/results.json` as `T`.
pub fn read_results<T: DeserializeOwned>(run: &Path) -> Result<T> {
    read_json(&run.join(RESULTS_FILE))
}

/// Reads a JSON file of the run folder as `T`; the error names the file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let err = |message: String| RunFolderError {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    Ok(serde_json::from_str(&text).map_err(|e| err(e.to_string()))?)
}

/// Writes `value` as pretty JSON to `path` (atomically).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("serializable");
    pipeline::shard::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// What a checkpoint records besides tensors.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Updates done.
    pub step: u64,
    /// Optimizer updates taken (differs from `step` by the skipped non-finite ones).
    pub optimizer_steps: u64,
    pub skipped_steps: u64,
    pub rollbacks: u64,
    /// The best k-NN top-1 so far and its step (kept in best.safetensors).
    #[serde(default)]
    pub best_knn: Option<(f64, u64)>,
}

impl TrainState {
    pub fn new() -> Self {
        TrainState {
            step: 0,
            optimizer_steps: 0,
            skipped_steps: 0,
            rollbacks: 0,
            best_knn: None,
        }
    }
}

impl Default for TrainState {
    fn default() -> Self {
        Self::new()
    }
}

/// The run's metrics.jsonl, opened for appending one JSON object per logged step.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens (or creates) the log without following a symlink planted under its name. A last
    /// line torn by a crash is ended first, so the next line stays whole; readers skip the
    /// torn one.
    pub fn open(path: &Path) -> Result<Self> {
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true).read(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
        let mut file = options.open(path).map_err(|e| Error::io(path, e))?;
        if ends_torn(&mut file).map_err(|e| Error::io(path, e))? {
            writeln!(file).map_err(|e| Error::io(path, e))?;
        }
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn append<T: Serialize>(&mut self, line: &T) -> Result<()> {
        let json = serde_json::to_string(line).expect("serializable");
        writeln!(self.file, "{json}").map_err(|e| Error::io(&self.path, e))
    }

    /// Every line that parses as `T` (lines of other shapes are skipped).
    pub fn read<T: DeserializeOwned>(path: &Path) -> Vec<T> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Whether a non-empty file's last byte is not a newline.
fn ends_torn(file: &mut std::fs::File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// Drops the metrics of steps after `step` (written after the checkpoint a run resumes or rolls
/// back from), so metrics.jsonl holds each step once.
pub fn trim_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|m| m.get("step").and_then(|s| s.as_u64()).is_some_and(|s| s <= step))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    if kept.len() != text.len() {
        pipeline::shard::write_atomic(path, kept.as_bytes())?;
    }
    Ok(())
}

/// Writes model, optimizer moments and state to the run's checkpoint (atomically).
pub fn save_checkpoint<B: AutodiffBackend, M: AutodiffModule<B>, C: Serialize>(
    path: &Path,
    cfg: &C,
    model: &M,
    opt: &AdamW<B>,
    state: &TrainState,
) -> Result<()> {
    let mut tensors = named_params(model);
    let host = |t: &Tensor<B::InnerBackend, 1>| (t.dims().to_vec(), t.clone().into_data().iter::<f32>().collect());
    let m: NamedTensors = opt.moments.iter().map(|(k, mo)| (k.clone(), host(&mo.m))).collect();
    let v: NamedTensors = opt.moments.iter().map(|(k, mo)| (k.clone(), host(&mo.v))).collect();
    let master: NamedTensors = opt
        .moments
        .iter()
        .filter_map(|(k, mo)| mo.master.as_ref().map(|t| (k.clone(), host(t))))
        .collect();
    tensors.extend(optimizer_entries("m", m));
    tensors.extend(optimizer_entries("v", v));
    tensors.extend(optimizer_entries("master", master));
    save_tensors(path, &tensors, Some(file_meta(cfg, state)))
}

/// The safetensors metadata of a checkpoint or best.safetensors: the training state and the
/// run's resolved config.
fn file_meta<C: Serialize>(cfg: &C, state: &TrainState) -> HashMap<String, String> {
    HashMap::from([
        (
            STATE_KEY.to_string(),
            serde_json::to_string(state).expect("serializable"),
        ),
        (
            "splitmask.config".to_string(),
            serde_json::to_string(cfg).expect("serializable"),
        ),
    ])
}

/// Writes the model's parameters alone (no optimizer state) with the training state, as
/// best.safetensors: a file `trainer finetune --init` and `trainer eval --run` read like a
/// checkpoint.
pub fn save_model<B: AutodiffBackend, M: AutodiffModule<B>, C: Serialize>(
    path: &Path,
    cfg: &C,
    model: &M,
    state: &TrainState,
) -> Result<()> {
    save_tensors(path, &named_params(model), Some(file_meta(cfg, state)))
}

/// The training state recorded in a checkpoint or best.safetensors.
pub fn read_state(path: &Path) -> Result<TrainState> {
    let (_, meta) = load_tensors(path)?;
    Ok(meta
        .get(STATE_KEY)
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| CheckpointError::Incomplete {
            path: path.to_path_buf(),
            message: format!("no {STATE_KEY} in the header"),
        })?)
}

/// Where every rank starts: from the run's checkpoint `path` where `resume` finds one (the
/// state is returned), else from `model`. The ranks agree that each loaded its copy, then
/// check that each starts at the same step of the same configuration (nodes that do not see
/// the same run folder would not).
pub fn start_ranks<B: AutodiffBackend, M: AutodiffModule<B>, C: Serialize>(
    path: &Path,
    cfg: &C,
    model: M,
    opt: &mut AdamW<B>,
    resume: bool,
    world: &World,
    device: &B::Device,
) -> Result<(M, Option<TrainState>)> {
    let loaded = match resume && path.exists() {
        true => load_checkpoint(path, model.clone(), opt, device).map(Some),
        false => Ok(None),
    };
    let loaded = world.agree::<B::InnerBackend, _>(loaded, device)?;
    let step = loaded.as_ref().map_or(0, |(_, s)| s.step);
    world.same::<B::InnerBackend>(
        &[("the configuration", fingerprint(cfg)), ("the step resumed from", step)],
        device,
    )?;
    Ok(match loaded {
        Some((model, state)) => (model, Some(state)),
        None => (model, None),
    })
}

/// Restores model, optimizer and state from the run's checkpoint.
pub fn load_checkpoint<B: AutodiffBackend, M: AutodiffModule<B>>(
    path: &Path,
    model: M,
    opt: &mut AdamW<B>,
    device: &B::Device,
) -> Result<(M, TrainState)> {
    let path = path.to_path_buf();
    let (all, meta) = load_tensors(&path)?;
    let state: TrainState = meta
        .get(STATE_KEY)
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| CheckpointError::Incomplete {
            path: path.clone(),
            message: format!("no {STATE_KEY} in the header"),
        })?;
    let (params, [m, v, mut master]) = split_optimizer(all);
    let model = load_exactly(model, &params, &path, device)?;
    opt.moments.clear();
    for (k, (shape, mv)) in m {
        let (_, vv) = v.get(&k).ok_or_else(|| CheckpointError::Incomplete {
            path: path.clone(),
            message: format!("optimizer moment v of {k:?} missing"),
        })?;
        let n: usize = shape.iter().product();
        // Moments and masters are f32 whatever the backend's float type (see `optim`).
        let f32_tensor = |values: Vec<f32>| {
            Tensor::<B::InnerBackend, 1>::from_data(TensorData::new(values, [n]), device).cast(FloatDType::F32)
        };
        let master = master.remove(&k).map(|(_, values)| f32_tensor(values));
        opt.moments.insert(
            k,
            Moments {
                m: f32_tensor(mv),
                v: f32_tensor(vv.clone()),
                master,
            },
        );
    }
    opt.step = state.optimizer_steps;
    Ok((model, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line torn by a crash costs that line only: the next append starts on a new line.
    #[test]
    fn metrics_after_a_torn_line_stay_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        std::fs::write(&path, "{\"step\":1}\n{\"step\":2,\"lo").unwrap();
        let mut log = MetricsLog::open(&path).unwrap();
        log.append(&serde_json::json!({"step": 3})).unwrap();
        let steps: Vec<serde_json::Value> = MetricsLog::read(&path);
        assert_eq!(steps, [serde_json::json!({"step": 1}), serde_json::json!({"step": 3})]);
        drop(log);
        MetricsLog::open(&path).unwrap();
        assert!(
            std::fs::read_to_string(&path).unwrap().ends_with("{\"step\":3}\n"),
            "nothing added to a whole file"
        );
    }

    /// A metrics.jsonl planted as a symlink is refused, and its target keeps its contents.
    #[cfg(unix)]
    #[test]
    fn a_planted_metrics_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious.txt");
        std::fs::write(&target, "keep me").unwrap();
        let path = dir.path().join(METRICS_FILE);
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(MetricsLog::open(&path).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    }
}
