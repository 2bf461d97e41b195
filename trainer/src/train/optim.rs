//! AdamW with per-parameter weight decay and learning-rate scale (layer-wise decay in
//! fine-tuning), global-norm or per-parameter gradient clipping, and gradient accumulation.
//!
//! burn 0.21 has no parameter groups, and its `GradientClippingConfig::Norm` clips each tensor
//! by its own norm. BEiT's recipe needs no weight decay on norms, biases, tokens and position
//! embeddings, clipping by the norm of all gradients together, and (for fine-tuning) a
//! learning rate per block. So the update is written here as a `ModuleMapper` that knows each
//! parameter's path (`encoder.blocks.3.attn.qkv.weight`); its moments are keyed by that path,
//! which is also how checkpoints store them.
//!
//! Mixed precision: burn 0.21 has no autocast, so a `Cuda<bf16>` backend holds parameters in
//! bf16, where an update below ~0.4% of a weight rounds away. The optimizer therefore keeps an
//! f32 master copy of every parameter whose dtype is not f32 (and f32 moments), updates the
//! master and writes its bf16 rounding back into the model. On f32 backends the parameter is
//! its own master and nothing extra is stored.
//!
//! On LibTorch the update of each parameter is PyTorch's fused AdamW kernel (one pass over
//! parameter, gradient and moments, the clipping factor applied inside it); elsewhere it is
//! written in tensor ops. Both compute the same update (tested against each other).

use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, FloatDType};
use serde::{Deserialize, Serialize};

use crate::model::objective::read_scalar;

/// AdamW hyper-parameters (PyTorch's defaults for eps; burn's differ).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        AdamWSettings {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
        }
    }
}

/// Whether a parameter is decayed: weights of linear layers are; norms, biases, layer scales
/// (all 1-D), the class and mask tokens and position embeddings are not (BEiT's rule).
pub fn decays(path: &str, ndim: usize) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path);
    ndim > 1 && !matches!(last, "cls_token" | "mask_token" | "pos_embed" | "decoder_pos")
}

/// First and second moments of one parameter, flattened, in f32; and the f32 master copy of
/// a parameter stored in lower precision.
#[derive(Debug, Clone)]
pub struct Moments<B: Backend> {
    pub m: Tensor<B, 1>,
    pub v: Tensor<B, 1>,
    pub master: Option<Tensor<B, 1>>,
}

/// Learning-rate multiplier of a parameter, from its path (layer-wise decay in fine-tuning).
pub type LrScale = dyn Fn(&str) -> f64;

#[derive(Debug)]
pub struct AdamW<B: AutodiffBackend> {
    pub settings: AdamWSettings,
    /// Updates taken, for the bias correction.
    pub step: u64,
    pub moments: HashMap<String, Moments<B::InnerBackend>>,
    /// Bounds each parameter's gradient norm, after `clip_scale` (DINO's clipping; `None`:
    /// the global norm is clipped through `clip_scale` alone).
    pub clip_each: Option<f64>,
}

impl<B: AutodiffBackend> AdamW<B> {
    pub fn new(settings: AdamWSettings) -> Self {
        AdamW {
            settings,
            step: 0,
            moments: HashMap::new(),
            clip_each: None,
        }
    }

    /// One update of every parameter that has a gradient. `clip_scale` multiplies all
    /// gradients (from [`global_grad_norm`]).
    pub fn step<M: AutodiffModule<B>>(
        &mut self,
        module: M,
        grads: &mut GradientsParams,
        lr: f64,
        clip_scale: f64,
        lr_scale: &LrScale,
    ) -> M {
        self.step += 1;
        let mut mapper = UpdateMapper {
            opt: self,
            grads,
            lr,
            clip_scale,
            lr_scale,
            path: Vec::new(),
        };
        module.map(&mut mapper)
    }
}

struct UpdateMapper<'a, B: AutodiffBackend> {
    opt: &'a mut AdamW<B>,
    grads: &'a mut GradientsParams,
    lr: f64,
    clip_scale: f64,
    lr_scale: &'a LrScale,
    path: Vec<String>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for UpdateMapper<'_, B> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let path = self.path.join(".");
        let s = self.opt.settings;
        let shape = tensor.shape();
        let n = shape.num_elements();
        let require_grad = tensor.is_require_grad();
        let p = tensor.inner().reshape([n]);
        let dtype = p.dtype();
        let low_precision = dtype != DType::F32;
        let g = grad.reshape([n]).cast(FloatDType::F32);
        let (g, clip_scale) = match self.opt.clip_each {
            Some(max) => (clip_norm(g * self.clip_scale, max), 1.0),
            None => (g, self.clip_scale),
        };
        let (m, v, master) = match self.opt.moments.remove(&path) {
            Some(mo) => (mo.m, mo.v, mo.master),
            None => (g.zeros_like(), g.zeros_like(), None),
        };
        let p = match master {
            Some(master) if low_precision => master,
            _ => p.cast(FloatDType::F32),
        };
        let step = UpdateStep {
            step: self.opt.step,
            lr: self.lr * (self.lr_scale)(&path),
            weight_decay: if decays(&path, D) { s.weight_decay } else { 0.0 },
            clip_scale,
            settings: s,
        };
        let (p, m, v) = adamw_update(p, g, m, v, step);
        let master = low_precision.then(|| p.clone());
        self.opt.moments.insert(path, Moments { m, v, master });
        let p = if low_precision { p.cast(dtype) } else { p };
        let mut t = Tensor::<B, D>::from_inner(p.reshape(shape));
        if require_grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

/// One parameter's update: the step number, its learning rate and weight decay.
#[derive(Debug, Clone, Copy)]
struct UpdateStep {
    /// Updates taken, this one included (the bias correction).
    step: u64,
    lr: f64,
    weight_decay: f64,
    /// Multiplies the gradient (global-norm clipping).
    clip_scale: f64,
    settings: AdamWSettings,
}

/// PyTorch's AdamW on one flattened f32 parameter `p` with gradient `g` and moments `m`, `v`:
/// decoupled decay `p *= 1 - lr * wd`, then the bias-corrected Adam step. Returns the new
/// parameter and moments.
fn adamw_update<B: Backend>(
    p: Tensor<B, 1>,
    g: Tensor<B, 1>,
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
    u: UpdateStep,
) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>) {
    #[cfg(feature = "tch")]
    let (p, g, m, v) = match crate::kernels::libtorch::try_run::<B, fused::Adamw>((p, g, m, v, u)) {
        Ok(out) => return out,
        Err((p, g, m, v, _)) => (p, g, m, v),
    };
    let s = u.settings;
    let g = g * u.clip_scale;
    let m = m * s.beta1 + g.clone() * (1.0 - s.beta1);
    let v = v * s.beta2 + g.powi_scalar(2) * (1.0 - s.beta2);
    let t = u.step as i32;
    let bc1 = 1.0 - s.beta1.powi(t);
    let bc2 = 1.0 - s.beta2.powi(t);
    let denom = (v.clone() / bc2).sqrt() + s.eps;
    let update = (m.clone() / bc1) / denom;
    let p = p * (1.0 - u.lr * u.weight_decay) - update * u.lr;
    (p, m, v)
}

/// The update on LibTorch: PyTorch's fused AdamW kernel, in place where the tensors are this
/// update's alone.
#[cfg(feature = "tch")]
mod fused {
    use burn::backend::libtorch::{LibTorch, TchElement, TchTensor};
    use burn::prelude::*;
    use burn::tensor::TensorPrimitive;

    use super::UpdateStep;
    use crate::kernels::libtorch::{fused_adamw, AdamwStep, Kernel, Ran};

    pub(super) struct Adamw;

    type Args<B> = (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>, UpdateStep);

    impl Kernel for Adamw {
        type On<E: TchElement> = LibTorch<E>;
        type Args<B: Backend> = Args<B>;
        type Out<B: Backend> = (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>);

        fn run<E: TchElement>((p, g, m, v, u): Args<LibTorch<E>>) -> Ran<Self, LibTorch<E>> {
            let [p, g, m, v] = [p, g, m, v].map(|t| exclusive(t.into_primitive().tensor()));
            let s = u.settings;
            fused_adamw(
                &[&p.tensor],
                &[&g.tensor],
                &[&m.tensor],
                &[&v.tensor],
                AdamwStep {
                    step: u.step,
                    lr: u.lr,
                    beta1: s.beta1,
                    beta2: s.beta2,
                    weight_decay: u.weight_decay,
                    eps: s.eps,
                    grad_scale: 1.0 / u.clip_scale,
                },
            );
            let wrap = |t: TchTensor| Tensor::from_primitive(TensorPrimitive::Float(t));
            Ok((wrap(p), wrap(m), wrap(v)))
        }
    }

    /// `t` itself where its storage is its own and contiguous, else a contiguous copy: the
    /// kernel writes in place, and a tensor shared with another holder (a model clone, a view)
    /// must not change under it.
    fn exclusive(t: TchTensor) -> TchTensor {
        if t.storage.can_mut() && t.tensor.is_contiguous() {
            return t;
        }
        let mut copy = tch::Tensor::empty(t.tensor.size(), (t.tensor.kind(), t.tensor.device()));
        copy.copy_(&t.tensor);
        TchTensor::new(copy)
    }
}

/// The L2 norm of all gradients together (BEiT clips it to 3.0). One host sync.
pub fn global_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M, grads: &GradientsParams) -> f64 {
    struct Norms<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        sum: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Norms<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let sq = g.powi_scalar(2).sum();
                self.sum = Some(match self.sum.take() {
                    Some(s) => s + sq,
                    None => sq,
                });
            }
        }
    }
    let mut v = Norms::<B> { grads, sum: None };
    module.visit(&mut v);
    v.sum.map(|s| read_scalar(s).sqrt()).unwrap_or(0.0)
}

/// The multiplier that clips a gradient of norm `norm` to `max_norm` (1 when within).
pub fn clip_scale(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(max) if norm > max => max / (norm + 1e-6),
        _ => 1.0,
    }
}

/// `g` scaled down to norm `max` where its norm is above (DINO's `clip_gradients`), on the
/// device: no host sync per parameter.
fn clip_norm<B: Backend>(g: Tensor<B, 1>, max: f64) -> Tensor<B, 1> {
    let n = g.dims()[0];
    let norm = g.clone().powi_scalar(2).sum().sqrt();
    let coef = (norm + 1e-6).recip().mul_scalar(max).clamp_max(1.0);
    g * coef.expand([n])
}

/// Adds `b`'s gradients into `a` (gradient accumulation over micro-batches).
pub fn accumulate<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    a: GradientsParams,
    b: GradientsParams,
) -> GradientsParams {
    struct Sum<'a, B: AutodiffBackend> {
        acc: GradientsParams,
        add: GradientsParams,
        _b: std::marker::PhantomData<&'a B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Sum<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let id: ParamId = param.id;
            if let Some(g) = self.add.remove::<B::InnerBackend, D>(id) {
                let total = match self.acc.remove::<B::InnerBackend, D>(id) {
                    Some(prev) => prev + g,
                    None => g,
                };
                self.acc.register::<B::InnerBackend, D>(id, total);
            }
        }
    }
    let mut s = Sum::<B> {
        acc: a,
        add: b,
        _b: std::marker::PhantomData,
    };
    module.visit(&mut s);
    s.acc
}

/// Depth of a parameter for layer-wise decay: 0 for the embeddings, `i + 1` for block `i`,
/// `depth + 1` for the final norms and the head (BEiT's `get_layer_id_for_vit`).
pub fn layer_id(path: &str, depth: usize) -> usize {
    let Some(rest) = path.strip_prefix("encoder.") else {
        return depth + 1;
    };
    if let Some(block) = rest.strip_prefix("blocks.") {
        let i: usize = block.split('.').next().and_then(|s| s.parse().ok()).unwrap_or(depth);
        return i + 1;
    }
    if rest.starts_with("norm.") {
        depth + 1
    } else {
        0
    }
}

/// Learning-rate multiplier `decay^(depth + 1 - layer_id)`: the head trains at the full rate,
/// each block below at `decay` times the one above.
pub fn layer_decay_scale(path: &str, depth: usize, decay: f64) -> f64 {
    decay.powi((depth + 1 - layer_id(path, depth)) as i32)
}

#[cfg(test)]
backend_tests! {
    use super::*;
    use crate::model::beit::Beit;
    use crate::model::objective::test_support::{beit_batch, quarter_batch, split_batch, tiny_vit};
    use crate::model::objective::{MimBatch, Objective};
    use crate::model::splitmask::SplitMask;
    use crate::model::vit::Mode;
    use burn::nn::{Linear, LinearConfig};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn decay_rule_follows_beit() {
        assert!(decays("encoder.blocks.0.attn.qkv.weight", 2));
        assert!(!decays("encoder.blocks.0.attn.qkv.bias", 1));
        assert!(!decays("encoder.blocks.0.norm1.gamma", 1));
        assert!(!decays("encoder.pos_embed", 3));
        assert!(!decays("encoder.cls_token", 3));
        assert!(!decays("mask_token", 3));
    }

    #[test]
    fn adamw_matches_hand_computed_steps_and_clipping() {
        // One linear layer y = x w + b, loss = sum(y); the gradient of w is x^T 1, of b is n.
        type B = TestAutodiff;
        let device = Default::default();
        let mut lin: Linear<B> = LinearConfig::new(2, 1).init(&device);
        lin.weight = Param::from_tensor(Tensor::from_data(TensorData::new(vec![1.0f32, -1.0], [2, 1]), &device));
        lin.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![0.5f32], [1]),
            &device,
        )));
        let x = Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]), &device);
        let settings = AdamWSettings {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut opt = AdamW::<B>::new(settings);
        let loss = lin.forward(x.clone()).sum();
        let mut grads = GradientsParams::from_grads(loss.backward(), &lin);
        // grad w = (4, 6), grad b = 2: global norm sqrt(16 + 36 + 4) = sqrt(56).
        let norm = global_grad_norm::<B, _>(&lin, &grads);
        assert!((norm - 56f64.sqrt()).abs() < 1e-5);
        let scale = clip_scale(norm, Some(1.0));
        let lin = opt.step(lin, &mut grads, 0.1, scale, &|_| 1.0);
        // First Adam step moves each parameter by lr * sign(g) (bias-corrected m / sqrt(v) = ±1),
        // whatever the clipping; weights also decay by lr * wd.
        let w: Vec<f32> = lin.weight.val().into_data().to_vec().unwrap();
        let b: Vec<f32> = lin.bias.as_ref().unwrap().val().into_data().to_vec().unwrap();
        assert!((w[0] - (1.0 * (1.0 - 0.01) - 0.1)).abs() < 1e-5, "{w:?}");
        assert!((w[1] - (-(1.0 - 0.01) - 0.1)).abs() < 1e-5, "{w:?}");
        assert!((b[0] - (0.5 - 0.1)).abs() < 1e-5, "bias is not decayed: {b:?}");
        assert_eq!(opt.moments.len(), 2);
        let m = opt.moments["weight"].m.clone().into_data().to_vec::<f32>().unwrap();
        let expect = 0.1 * 4.0 / (56f64.sqrt() + 1e-6);
        assert!(
            (m[0] as f64 - expect).abs() < 1e-5,
            "m holds the clipped gradient: {m:?}"
        );
        assert!(
            opt.moments["weight"].master.is_none(),
            "f32 parameters are their own master"
        );
    }

    #[test]
    fn per_parameter_clipping_bounds_each_gradient_alone() {
        type B = TestAutodiff;
        let device = Default::default();
        let mut lin: Linear<B> = LinearConfig::new(2, 1).init(&device);
        lin.weight = Param::from_tensor(Tensor::from_data(TensorData::new(vec![1.0f32, -1.0], [2, 1]), &device));
        let x = Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]), &device);
        let mut opt = AdamW::<B>::new(AdamWSettings::default());
        opt.clip_each = Some(3.0);
        let grads = || GradientsParams::from_grads(lin.forward(x.clone()).sum().backward(), &lin);
        // Two micro-batches' sum, halved by the accumulation scale before the bound: grad w =
        // (4, 6) of norm sqrt(52) > 3 is clipped to 3; grad b = 2 is within and kept.
        let mut grads = accumulate(&lin, grads(), grads());
        opt.step(lin, &mut grads, 0.1, 0.5, &|_| 1.0);
        let m = |k: &str| opt.moments[k].m.clone().into_data().to_vec::<f32>().unwrap();
        let s = 3.0 / (52f64.sqrt() + 1e-6);
        let (w, b) = (m("weight"), m("bias"));
        assert!((w[0] as f64 - 0.1 * 4.0 * s).abs() < 1e-6, "{w:?}");
        assert!((w[1] as f64 - 0.1 * 6.0 * s).abs() < 1e-6, "{w:?}");
        assert!((b[0] as f64 - 0.1 * 2.0).abs() < 1e-6, "the bias is within the bound: {b:?}");
    }

    /// The update (the fused kernel on LibTorch) against PyTorch's AdamW written out in f64 on
    /// the host, over several steps with clipping and decay; and a parameter held elsewhere
    /// too (a model clone) keeps its value, as burn's value semantics promise.
    #[test]
    fn adamw_update_follows_pytorch_over_steps_and_leaves_shared_tensors_alone() {
        type I = <TestAutodiff as AutodiffBackend>::InnerBackend;
        let device = Default::default();
        let n = 37;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        use rand::Rng;
        let init: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let settings = AdamWSettings { weight_decay: 0.05, ..Default::default() };
        let t = |v: &[f64]| Tensor::<I, 1>::from_data(TensorData::new(v.iter().map(|&x| x as f32).collect(), [n]), &device);
        let (mut p, mut m, mut v) = (t(&init), t(&vec![0.0; n]), t(&vec![0.0; n]));
        let held = p.clone();
        let (mut hp, mut hm, mut hv) = (init.clone(), vec![0.0; n], vec![0.0; n]);
        for step in 1..=5u64 {
            let g: Vec<f64> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
            let u = UpdateStep { step, lr: 1e-2, weight_decay: 0.05, clip_scale: 0.5, settings };
            (p, m, v) = adamw_update(p, t(&g), m, v, u);
            let s = settings;
            for i in 0..n {
                let gi = g[i] * u.clip_scale;
                hm[i] = s.beta1 * hm[i] + (1.0 - s.beta1) * gi;
                hv[i] = s.beta2 * hv[i] + (1.0 - s.beta2) * gi * gi;
                let mhat = hm[i] / (1.0 - s.beta1.powi(step as i32));
                let vhat = hv[i] / (1.0 - s.beta2.powi(step as i32));
                hp[i] = hp[i] * (1.0 - u.lr * u.weight_decay) - u.lr * mhat / (vhat.sqrt() + s.eps);
            }
        }
        let tol = burn::tensor::Tolerance::<f32>::absolute(1e-5);
        p.into_data().assert_approx_eq::<f32>(&t(&hp).into_data(), tol);
        m.into_data().assert_approx_eq::<f32>(&t(&hm).into_data(), tol);
        v.into_data().assert_approx_eq::<f32>(&t(&hv).into_data(), tol);
        held.into_data().assert_approx_eq::<f32>(&t(&init).into_data(), burn::tensor::Tolerance::<f32>::absolute(0.0));
    }

    #[test]
    fn bf16_parameters_keep_f32_master_weights() {
        // 200 updates of 1e-4 on a weight of 1.0: each is below bf16's resolution at 1.0
        // (2^-8 = 0.0039), so updating the bf16 value directly would never move it.
        type B = TestAutodiff;
        let device = Default::default();
        let mut lin: Linear<B> = LinearConfig::new(1, 1).with_bias(false).init(&device);
        let w = Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32], [1, 1]), &device).cast(FloatDType::BF16);
        lin.weight = Param::from_tensor(w);
        let mut opt = AdamW::<B>::new(AdamWSettings {
            weight_decay: 0.0,
            ..Default::default()
        });
        for _ in 0..200 {
            let mut grads = GradientsParams::new();
            let g = Tensor::<<B as AutodiffBackend>::InnerBackend, 2>::ones([1, 1], &device).cast(FloatDType::BF16);
            grads.register(lin.weight.id, g);
            lin = opt.step(lin, &mut grads, 1e-4, 1.0, &|_| 1.0);
        }
        assert_eq!(lin.weight.val().dtype(), DType::BF16);
        let master = opt.moments["weight"].master.clone().expect("a master copy for bf16");
        let m = master.into_data().to_vec::<f32>().unwrap()[0];
        assert!((m - 0.98).abs() < 1e-4, "master {m}");
        let w: f32 = lin.weight.val().into_data().iter::<f32>().next().unwrap();
        assert!((w - 0.98).abs() < 0.004, "the bf16 weight follows its master: {w}");
    }
    #[test]
    fn layer_decay_follows_depth() {
        let d = 4;
        let s = |p: &str| layer_decay_scale(p, d, 0.5);
        assert_eq!(s("head.weight"), 1.0);
        assert_eq!(s("fc_norm.gamma"), 1.0);
        assert_eq!(s("encoder.norm.gamma"), 1.0);
        assert_eq!(s("encoder.blocks.3.attn.qkv.weight"), 0.5);
        assert_eq!(s("encoder.blocks.0.mlp.fc1.bias"), 0.5f64.powi(4));
        for p in [
            "encoder.cls_token",
            "encoder.pos_embed",
            "encoder.patch_embed.proj.weight",
        ] {
            assert_eq!(s(p), 0.5f64.powi(5), "{p}");
        }
        // Block 10 of 12 is not block 1.
        assert_eq!(layer_id("encoder.blocks.10.norm1.beta", 12), 11);
    }

    /// Token losses (every method's first term) over `steps` AdamW updates (lr 2e-3) on the same batch.
    fn overfit_losses<B: AutodiffBackend, M: AutodiffModule<B> + Objective<B>>(
        mut model: M,
        batch: &MimBatch<B, M::Masks>,
        steps: usize,
    ) -> Vec<f32> {
        let mut opt = AdamW::<B>::new(AdamWSettings::default());
        let mut losses = Vec::new();
        for _ in 0..steps {
            let out = model.forward(batch, Mode::train(0));
            losses.push(out.term(0) as f32);
            let mut grads = GradientsParams::from_grads(out.loss.backward(), &model);
            model = opt.step(model, &mut grads, 2e-3, 1.0, &|_| 1.0);
        }
        losses
    }

    #[test]
    fn beit_overfits_one_batch() {
        let device = Default::default();
        let model = Beit::<TestAutodiff>::new(&tiny_vit(), 32, &mut ChaCha8Rng::seed_from_u64(0), &device);
        let losses = overfit_losses(model, &beit_batch::<TestAutodiff>(4, 32, &device), 60);
        assert!(losses[59] < losses[0] * 0.3, "{losses:?}");
    }

    #[test]
    fn splitmask_overfits_one_batch() {
        let device = Default::default();
        let model = SplitMask::<TestAutodiff>::tiny(32, &device);
        let losses = overfit_losses(model, &split_batch(4, 32, 2, &device), 60);
        assert!(losses[59] < losses[0] * 0.3, "{losses:?}");
    }

    #[test]
    fn mae_overfits_one_batch() {
        let device = Default::default();
        let model = crate::model::mae::Mae::<TestAutodiff>::tiny(true, &device);
        // Normalized noise patches from 4 visible ones: memorized slowly by a width-16 decoder
        // (1.0 to 0.82 in 60 steps measured), but steadily.
        let losses = overfit_losses(model, &crate::model::objective::test_support::mae_batch(4, &device), 60);
        assert!(losses[59] < losses[0] * 0.9, "{losses:?}");
        assert!(losses.windows(10).all(|w| w[9] < w[0]), "{losses:?}");
    }

    #[test]
    fn splitmask_quarter_branches_overfit_one_batch() {
        // Each branch sees 4 of 16 patches and predicts the other 12: a harder task, so more
        // steps than the halves need.
        let device = Default::default();
        let model = SplitMask::<TestAutodiff>::tiny(32, &device);
        let losses = overfit_losses(model, &quarter_batch(4, 32, 2, &device), 100);
        assert!(losses[99] < losses[0] * 0.3, "{losses:?}");
    }
}
