//! Checkpoints as safetensors: every parameter under its module path
//! (`encoder.blocks.0.attn.qkv.weight`, burn layout, f32), the optimizer moments and master
//! weights under `optim.{m,v,master}.<path>`, and the training state (step, data position, config
//! hash) as JSON in the header. Written atomically; loading is strict about names and shapes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{CheckpointError, Error, Result};

pub const STATE_KEY: &str = "splitmask.state";

/// Host copies of named f32 tensors.
pub type NamedTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// All float parameters of a module by path, copied to the host.
pub fn named_params<B: Backend, M: Module<B>>(module: &M) -> NamedTensors {
    struct Collect {
        path: Vec<String>,
        out: NamedTensors,
    }
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let t = param.val();
            let shape = t.dims().to_vec();
            let values = t.into_data().iter::<f32>().collect();
            self.out.insert(self.path.join("."), (shape, values));
        }
    }
    let mut c = Collect {
        path: Vec::new(),
        out: BTreeMap::new(),
    };
    module.visit(&mut c);
    c.out
}

/// Replaces the module's parameters by the named tensors. Every parameter must be present
/// with its shape unless `allow_missing` says otherwise; names the module lacks are returned
/// so the caller decides whether they are an error (pre-training heads) or not.
pub fn load_params<B: Backend, M: Module<B>>(
    module: M,
    tensors: &NamedTensors,
    allow_missing: &dyn Fn(&str) -> bool,
    file: &Path,
    device: &B::Device,
) -> Result<(M, Vec<String>), CheckpointError> {
    struct Load<'a> {
        path: Vec<String>,
        tensors: &'a NamedTensors,
        allow_missing: &'a dyn Fn(&str) -> bool,
        used: Vec<String>,
        missing: Vec<String>,
        shape_error: Option<(String, Vec<usize>, Vec<usize>)>,
    }
    struct Mapper<'a, 'd, B: Backend> {
        s: Load<'a>,
        device: &'d B::Device,
    }
    impl<B: Backend> ModuleMapper<B> for Mapper<'_, '_, B> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.s.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.s.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let name = self.s.path.join(".");
            let (id, tensor, mapper) = param.consume();
            let Some((shape, values)) = self.s.tensors.get(&name) else {
                if !(self.s.allow_missing)(&name) {
                    self.s.missing.push(name);
                }
                return Param::from_mapped_value(id, tensor, mapper);
            };
            let expected = tensor.dims().to_vec();
            if *shape != expected {
                self.s.shape_error.get_or_insert((name, shape.clone(), expected));
                return Param::from_mapped_value(id, tensor, mapper);
            }
            self.s.used.push(name);
            let require_grad = tensor.is_require_grad();
            let shape: [usize; D] = expected.try_into().expect("rank D");
            let mut t = Tensor::<B, D>::from_data(TensorData::new(values.clone(), shape), self.device);
            if require_grad {
                t = t.require_grad();
            }
            Param::from_mapped_value(id, t, mapper)
        }
    }
    let mut m = Mapper::<B> {
        s: Load {
            path: Vec::new(),
            tensors,
            allow_missing,
            used: Vec::new(),
            missing: Vec::new(),
            shape_error: None,
        },
        device,
    };
    let module = module.map(&mut m);
    let s = m.s;
    if let Some((name, found, expected)) = s.shape_error {
        return Err(CheckpointError::Shape {
            path: file.to_path_buf(),
            name,
            found,
            expected,
        });
    }
    if !s.missing.is_empty() {
        return Err(CheckpointError::Missing {
            path: file.to_path_buf(),
            missing: s.missing,
        });
    }
    let unused = tensors.keys().filter(|k| !s.used.contains(k)).cloned().collect();
    Ok((module, unused))
}

/// Writes named tensors (and optional JSON metadata) atomically.
pub fn save_tensors(path: &Path, tensors: &NamedTensors, meta: Option<HashMap<String, String>>) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, (shape, v))| {
            (
                k.clone(),
                shape.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(k, shape, b)| {
            (
                k.clone(),
                TensorView::new(Dtype::F32, shape.clone(), b).expect("sizes match"),
            )
        })
        .collect();
    let out = safetensors::serialize(views, meta).map_err(|e| CheckpointError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    pipeline::shard::write_atomic(path, &out)?;
    Ok(())
}

/// The largest tensor file read: 64 GiB, a ViT-g checkpoint with its AdamW moments in f32.
/// A device or FIFO named as a checkpoint is refused before it is read.
pub const MAX_TENSOR_FILE_BYTES: u64 = 64 << 30;

/// [`load_params`] where `tensors` must hold exactly the module's parameters: a name the
/// module lacks is an error too.
pub fn load_exactly<B: Backend, M: Module<B>>(
    module: M,
    tensors: &NamedTensors,
    file: &Path,
    device: &B::Device,
) -> Result<M, CheckpointError> {
    let (module, unexpected) = load_params(module, tensors, &|_| false, file, device)?;
    if !unexpected.is_empty() {
        return Err(CheckpointError::Unexpected {
            path: file.to_path_buf(),
            unexpected,
        });
    }
    Ok(module)
}

/// `skeleton` with every parameter of the checkpoint `file` (its optimizer state set aside),
/// loaded by [`load_exactly`].
pub fn load_checkpoint_params<B: Backend, M: Module<B>>(skeleton: M, file: &Path, device: &B::Device) -> Result<M> {
    let (params, _optimizer) = split_optimizer(load_tensors(file)?.0);
    Ok(load_exactly(skeleton, &params, file, device)?)
}

/// Reads all tensors (converted to f32) and the header metadata.
pub fn load_tensors(path: &Path) -> Result<(NamedTensors, HashMap<String, String>)> {
    let bytes = pipeline::source::read_regular(path, MAX_TENSOR_FILE_BYTES).map_err(|e| Error::io(path, e))?;
    let bad = |message: String| CheckpointError::Format {
        path: path.to_path_buf(),
        message,
    };
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32())
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f32())
                .collect(),
            other => {
                return Err(bad(format!(
                    "tensor {name:?} has dtype {other:?}; f32, bf16 or f16 expected"
                ))
                .into())
            }
        };
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok((out, meta))
}

/// The optimizer's per-parameter tensors in a checkpoint: moments and master weights.
pub const OPTIM_PARTS: [&str; 3] = ["m", "v", "master"];

/// Splits a checkpoint's tensors into model parameters and the optimizer's parts (keyed as
/// `optim.<part>.<path>`), in the order of [`OPTIM_PARTS`].
pub fn split_optimizer(all: NamedTensors) -> (NamedTensors, [NamedTensors; 3]) {
    let mut model = BTreeMap::new();
    let mut parts: [NamedTensors; 3] = Default::default();
    'next: for (k, t) in all {
        for (i, part) in OPTIM_PARTS.iter().enumerate() {
            if let Some(p) = k.strip_prefix(&format!("optim.{part}.")) {
                parts[i].insert(p.to_string(), t);
                continue 'next;
            }
        }
        model.insert(k, t);
    }
    (model, parts)
}

/// Names an optimizer part's tensors for storage next to the parameters.
pub fn optimizer_entries(part: &str, tensors: NamedTensors) -> NamedTensors {
    tensors
        .into_iter()
        .map(|(k, t)| (format!("optim.{part}.{k}"), t))
        .collect()
}

#[cfg(test)]
backend_tests! {
    use super::*;
    use crate::model::vit::{Vit, VitConfig};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn tiny() -> VitConfig {
        VitConfig::cpu_tiny().with_depth(2).with_dim(16).with_heads(2)
    }

    #[test]
    fn params_round_trip_through_a_file() {
        let device = Default::default();
        let a: Vit<TestBackend> = tiny().init(&mut ChaCha8Rng::seed_from_u64(0), &device);
        let b: Vit<TestBackend> = tiny().init(&mut ChaCha8Rng::seed_from_u64(1), &device);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ckpt.safetensors");
        let named = named_params(&a);
        assert!(
            named.contains_key("blocks.1.attn.qkv.weight"),
            "{:?}",
            named.keys().collect::<Vec<_>>()
        );
        assert!(named.contains_key("norm.gamma"));
        save_tensors(&file, &named, None).unwrap();
        let (loaded, _) = load_tensors(&file).unwrap();
        let (b, unused) = load_params(b, &loaded, &|_| false, &file, &device).unwrap();
        assert!(unused.is_empty());
        assert_eq!(named_params(&b), named);
    }

    #[test]
    fn loading_is_strict_about_names_and_shapes() {
        let device = Default::default();
        let vit: Vit<TestBackend> = tiny().init(&mut ChaCha8Rng::seed_from_u64(0), &device);
        let file = Path::new("model.safetensors");
        let mut named = named_params(&vit);
        named.remove("blocks.0.mlp.fc1.bias");
        named.insert("head.weight".into(), (vec![1], vec![0.0]));
        let err = load_params(vit.clone(), &named, &|_| false, file, &device).unwrap_err();
        assert!(err.to_string().contains("blocks.0.mlp.fc1.bias"), "{err}");
        let (_, unused) = load_params(vit.clone(), &named, &|n| n.ends_with("fc1.bias"), file, &device).unwrap();
        assert_eq!(unused, vec!["head.weight".to_string()]);
        let mut named = named_params(&vit);
        named.insert("norm.beta".into(), (vec![3], vec![0.0; 3]));
        let err = load_params(vit, &named, &|_| false, file, &device).unwrap_err();
        assert!(
            err.to_string()
                .contains("\"norm.beta\" has shape [3], the model expects [16]"),
            "{err}"
        );
    }
}
