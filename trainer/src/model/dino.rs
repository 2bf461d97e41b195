//! DINO (Caron et al. 2021), the paper's joint-embedding baseline: a student ViT learns to
//! match, on every crop of an image, what a teacher (an exponential moving average of the
//! student, momentum 0.996 to 1 on a cosine) outputs on the two global crops. Both end in
//! DINO's head (a 3-layer MLP, an L2-normalized bottleneck and a weight-normalized layer of K
//! prototypes); the teacher's outputs are centred (a running mean of its batch outputs,
//! momentum 0.9, over the global batch) and sharpened (temperature 0.04, optionally warming
//! up to another; the student's is 0.1). The loss is the cross-entropy between the teacher's distribution on
//! one global crop and the student's on every other crop. The teacher's encoder is the one
//! evaluated and exported, as DINO evaluates its teacher.

use std::f64::consts::PI;

use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::{gelu, softmax};
use rand::Rng;

use crate::kernels::fused::log_softmax;
use crate::model::init::{linear, param, trunc_normal};
use crate::model::losses::{in_f32, l2_normalize};
use crate::model::objective::{MethodSpec, MimBatch, MimOutput, Objective, Term, Unmasked};
use crate::model::vit::{Mode, Pool, Vit, VitConfig};

/// DINO's own options.
#[derive(Config, Debug, PartialEq)]
pub struct DinoConfig {
    /// Prototypes of the head's last layer (DINO: 65,536).
    #[config(default = 65536)]
    pub prototypes: usize,
    /// Hidden width of the head's MLP (DINO: 2048).
    #[config(default = 2048)]
    pub hidden_dim: usize,
    /// Width of the normalized bottleneck before the prototypes (DINO: 256).
    #[config(default = 256)]
    pub bottleneck_dim: usize,
    /// Temperature of the student's softmax (DINO: 0.1).
    #[config(default = 0.1)]
    pub student_temp: f64,
    /// Teacher temperature at the start of its warm-up (DINO: 0.04).
    #[config(default = 0.04)]
    pub warmup_teacher_temp: f64,
    /// Teacher temperature after the warm-up (DINO's default 0.04; its 300-epoch ViT-S recipe
    /// warms up to 0.07, which flattens the teacher to uniform in short runs).
    #[config(default = 0.04)]
    pub teacher_temp: f64,
    /// Share of the updates over which the teacher temperature warms up (DINO: 30 of 300
    /// epochs).
    #[config(default = 0.1)]
    pub warmup_teacher_share: f64,
    /// Teacher momentum at the start, rising to 1 on a cosine (DINO: 0.996).
    #[config(default = 0.996)]
    pub momentum_teacher: f64,
    /// Momentum of the centre (DINO: 0.9).
    #[config(default = 0.9)]
    pub center_momentum: f64,
    /// Share of the updates during which the prototypes are frozen (DINO: its first of 300
    /// epochs).
    #[config(default = "1.0 / 300.0")]
    pub freeze_last_layer_share: f64,
}

impl DinoConfig {
    /// DINO's head for encoders of paper width (384 and up); a smaller one on the CPU presets
    /// (4,096 prototypes, hidden 512, bottleneck 128), whose batches are a few dozen images.
    pub fn for_vit(vit: &VitConfig) -> Self {
        match vit.dim >= 384 {
            true => DinoConfig::new(),
            false => DinoConfig::new()
                .with_prototypes(4096)
                .with_hidden_dim(512)
                .with_bottleneck_dim(128),
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.prototypes < 2 || self.hidden_dim == 0 || self.bottleneck_dim == 0 {
            return Err(format!(
                "a head of {} prototypes, hidden {} and bottleneck {}: at least 2 prototypes and nonzero widths",
                self.prototypes, self.hidden_dim, self.bottleneck_dim
            ));
        }
        let temps = [self.student_temp, self.warmup_teacher_temp, self.teacher_temp];
        if temps.iter().any(|t| !(*t > 0.0 && t.is_finite())) {
            return Err(format!("temperatures {temps:?} must be positive"));
        }
        let shares = [
            self.momentum_teacher,
            self.center_momentum,
            self.warmup_teacher_share,
            self.freeze_last_layer_share,
        ];
        if shares.iter().any(|s| !(0.0..=1.0).contains(s)) {
            return Err(format!(
                "momenta and shares {shares:?} (teacher, centre, warm-up, frozen prototypes) must be in [0, 1]"
            ));
        }
        Ok(())
    }
}

/// DINO's projection head.
#[derive(Module, Debug)]
pub struct DinoHead<B: Backend> {
    /// Three layers: dim → hidden → hidden → bottleneck, GELU between them.
    pub mlp: Vec<Linear<B>>,
    /// `[bottleneck, prototypes]`; each prototype (a column) is normalized in the forward
    /// pass: DINO's weight-normalized layer with its gain fixed at 1 (`norm_last_layer`).
    pub last_layer: Param<Tensor<B, 2>>,
}

impl<B: Backend> DinoHead<B> {
    pub fn new<R: Rng>(dim: usize, cfg: &DinoConfig, rng: &mut R, device: &B::Device) -> Self {
        let (h, k) = (cfg.hidden_dim, cfg.bottleneck_dim);
        DinoHead {
            mlp: vec![
                linear(rng, dim, h, 1.0, device),
                linear(rng, h, h, 1.0, device),
                linear(rng, h, k, 1.0, device),
            ],
            last_layer: param(trunc_normal(rng, k * cfg.prototypes, 0.02), [k, cfg.prototypes], device),
        }
    }

    /// The prototype logits; `frozen` keeps the gradient from the prototypes (DINO's first
    /// epoch), so the optimizer leaves them as they are.
    ///
    /// # Shapes
    /// - x: `[n, dim]`
    /// - output: `[n, prototypes]`
    pub fn forward(&self, x: Tensor<B, 2>, frozen: bool) -> Tensor<B, 2> {
        let last = self.mlp.len() - 1;
        let mut x = x;
        for (i, layer) in self.mlp.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = gelu(x);
            }
        }
        let x = l2_normalize(x); // [n, bottleneck]
        let v = match frozen {
            true => self.last_layer.val().detach(),
            false => self.last_layer.val(),
        };
        let norm = v.clone().powi_scalar(2).sum_dim(0).sqrt().clamp_min(1e-12); // [1, prototypes]
        x.matmul(v / norm)
    }
}

#[derive(Module, Debug)]
pub struct Dino<B: Backend> {
    /// The teacher's encoder: what is evaluated and exported (not trained by the optimizer;
    /// it follows the student in [`Objective::after_update`]).
    pub encoder: Vit<B>,
    pub teacher_head: DinoHead<B>,
    pub student: Vit<B>,
    pub student_head: DinoHead<B>,
    /// `[prototypes]`: the running mean of the teacher's outputs (not trained).
    pub center: Param<Tensor<B, 1>>,
    #[module(skip)]
    pub options: DinoConfig,
    /// Updates in the run (the schedules' length).
    #[module(skip)]
    pub steps: u64,
}

/// The seed offset of the local crops' pass (its drop path draws apart from the global one's).
const LOCAL_PASS: u64 = 500;

impl<B: Backend> Dino<B> {
    pub fn new<R: Rng>(vit: &VitConfig, cfg: &DinoConfig, steps: u64, rng: &mut R, device: &B::Device) -> Self {
        let student = vit.init(rng, device);
        let student_head = DinoHead::new(vit.dim, cfg, rng, device);
        Dino {
            encoder: frozen_copy(&student),
            teacher_head: frozen_copy(&student_head),
            student,
            student_head,
            center: Param::from_tensor(Tensor::zeros([cfg.prototypes], device)).set_require_grad(false),
            options: cfg.clone(),
            steps,
        }
    }

    /// The teacher's temperature at update `step`: linear warm-up, then constant.
    pub fn teacher_temp(&self, step: u64) -> f64 {
        let o = &self.options;
        let warm = o.warmup_teacher_share * self.steps as f64;
        match (step as f64) < warm {
            true => o.warmup_teacher_temp + (o.teacher_temp - o.warmup_teacher_temp) * step as f64 / warm,
            false => o.teacher_temp,
        }
    }

    /// The teacher's momentum after update `step`: from `momentum_teacher` to 1 on a cosine.
    pub fn momentum(&self, step: u64) -> f64 {
        let t = step as f64 / self.steps.max(1) as f64;
        1.0 + (self.options.momentum_teacher - 1.0) * ((PI * t).cos() + 1.0) / 2.0
    }

    /// The class tokens of the student (or teacher) and its head's logits on one crop size.
    ///
    /// # Shapes
    /// - images: `[n, 3, side, side]`
    /// - output: `[n, prototypes]`
    fn logits(vit: &Vit<B>, head: &DinoHead<B>, images: Tensor<B, 4>, mode: Mode, frozen: bool) -> Tensor<B, 2> {
        let x = vit.forward(images, mode); // [n, 1 + patches, dim]
        let [n, _, d] = x.dims();
        head.forward(x.slice([0..n, 0..1, 0..d]).reshape([n, d]), frozen)
    }
}

impl<B: Backend> Objective<B> for Dino<B> {
    type Options = DinoConfig;
    type Masks = Unmasked;
    const TOKEN_TARGETS: bool = false;
    /// The loss; the mean entropy of the teacher's centred and sharpened distributions (near 0
    /// when it collapses onto one prototype per image, near ln K when it goes uniform); the
    /// entropy of their batch mean (near 0 when every image gets the same prototype).
    const TERMS: &'static [&'static str] = &["dino", "teacher_entropy", "batch_entropy"];
    /// DINO's k-NN and probes read the class token, which its loss trains.
    const POOL: Pool = Pool::ClassToken;
    /// The student, both heads and the centre: the teacher's encoder is the one kept.
    const HEADS: &'static [&'static str] = &["student.", "student_head.", "teacher_head.", "center"];

    /// DINO masks nothing.
    fn paper_mask_count(_patches: usize) -> usize {
        0
    }

    fn validate(spec: &MethodSpec<'_, DinoConfig>) -> Result<(), String> {
        spec.options.check()
    }

    fn build<R: Rng>(spec: &MethodSpec<'_, DinoConfig>, rng: &mut R, device: &B::Device) -> Self {
        Dino::new(spec.vit, spec.options, spec.steps, rng, device)
    }

    fn draw_masks(
        _spec: &MethodSpec<'_, DinoConfig>,
        _batch: usize,
        _rng: &dyn Fn(usize) -> rand_chacha::ChaCha8Rng,
        _device: &B::Device,
    ) -> Unmasked {
        Unmasked
    }

    fn encoder(&self) -> &Vit<B> {
        &self.encoder
    }

    /// # Shapes
    /// - batch.images, batch.views[0]: the global crops, `[batch, 3, size, size]`
    /// - batch.views[1..]: the local crops, `[batch, 3, local, local]`
    fn forward(&self, batch: &MimBatch<B, Unmasked>, mode: Mode) -> MimOutput<B> {
        let (second, locals) = batch
            .views
            .split_first()
            .expect("DINO is configured with multi-crop views");
        let b = batch.images.dims()[0];
        let frozen = (batch.step as f64) < self.options.freeze_last_layer_share * self.steps as f64;
        let globals = Tensor::cat(vec![batch.images.clone(), second.clone()], 0); // [2 batch, 3, s, s]
        let teacher = Self::logits(&self.encoder, &self.teacher_head, globals.clone(), Mode::Eval, false).detach();
        let mut student = vec![Self::logits(
            &self.student,
            &self.student_head,
            globals,
            mode.stacked(2),
            frozen,
        )];
        if !locals.is_empty() {
            let crops = Tensor::cat(locals.to_vec(), 0); // [locals * batch, 3, l, l]
            let mode = mode.for_layer(LOCAL_PASS).stacked(locals.len() as u64);
            student.push(Self::logits(&self.student, &self.student_head, crops, mode, frozen));
        }
        let stats = teacher.clone().mean_dim(0).reshape([-1]); // [prototypes]
        let (loss, terms) = self.loss(teacher, Tensor::cat(student, 0), b, batch.step);
        MimOutput {
            loss: loss.clone(),
            terms: [vec![Term::Value(loss)], terms].concat(),
            stats: Some(stats),
        }
    }

    /// The teacher follows the student (EMA at the step's momentum); the centre moves toward
    /// the update's teacher batch mean.
    fn after_update(mut self, step: u64, stats: Option<&[f64]>) -> Self {
        let m = self.momentum(step);
        self.encoder = ema(self.encoder, &self.student, m);
        self.teacher_head = ema(self.teacher_head, &self.student_head, m);
        if let Some(mean) = stats {
            let cm = self.options.center_momentum;
            let (id, center, mapper) = self.center.consume();
            let mean: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
            let mean = Tensor::<B, 1>::from_data(TensorData::new(mean, [center.dims()[0]]), &center.device());
            self.center = Param::from_mapped_value(id, center.detach() * cm + mean * (1.0 - cm), mapper);
        }
        self
    }
}

impl<B: Backend> Dino<B> {
    /// DINO's loss over every (teacher global crop, other student crop) pair, and the
    /// teacher's entropies.
    ///
    /// # Shapes
    /// - teacher: `[2 batch, prototypes]`, crop-major
    /// - student: `[views * batch, prototypes]`, crop-major, the two global crops first
    fn loss(&self, teacher: Tensor<B, 2>, student: Tensor<B, 2>, b: usize, step: u64) -> (Tensor<B, 1>, Vec<Term<B>>) {
        let k = teacher.dims()[1];
        let views = student.dims()[0] / b;
        // In f32 whatever the backend's float type (see `losses`).
        let (teacher, student) = (in_f32(teacher), in_f32(student));
        let center = in_f32(self.center.val().detach().reshape([1, k]));
        let t = (teacher - center) / self.teacher_temp(step);
        let q = softmax(t.clone(), 1); // [2 batch, prototypes]
        let logp = log_softmax(student / self.options.student_temp, 1).reshape([views, b, k]);
        let q3 = q.clone().reshape([2, b, k]);
        // Sum over every (teacher crop, student crop) pair, less the pairs of a crop with itself.
        let all = (logp.clone() * q3.clone().sum_dim(0)).sum();
        let same = (logp.slice([0..2, 0..b, 0..k]) * q3).sum();
        let loss = (same - all) / (b * (2 * views - 2)) as f64;
        let entropy = (q.clone() * log_softmax(t, 1)).sum_dim(1).mean().neg();
        let mean = q.mean_dim(0); // [1, prototypes]
        let batch_entropy = (mean.clone() * (mean + 1e-12).log()).sum().neg();
        (loss, vec![Term::Value(entropy), Term::Value(batch_entropy)])
    }
}

/// A copy of `module` with parameter ids of its own and no gradient (the teacher: its ids must
/// not collide with the student's, which the optimizer matches gradients by).
fn frozen_copy<B: Backend, M: Module<B>>(module: &M) -> M {
    struct Fresh;
    impl<B: Backend> ModuleMapper<B> for Fresh {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (_, tensor, mapper) = param.consume();
            Param::from_mapped_value(ParamId::new(), tensor.detach().set_require_grad(false), mapper)
        }
    }
    module.clone().map(&mut Fresh)
}

/// `teacher * m + student * (1 - m)`, parameter by parameter (the two share one architecture,
/// so they are visited in the same order); the teacher keeps its ids.
pub fn ema<B: Backend, M: Module<B>>(teacher: M, student: &M, m: f64) -> M {
    struct Collect<B: Backend>(Vec<Tensor<B, 1>>);
    impl<B: Backend> ModuleVisitor<B> for Collect<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(param.val().detach().reshape([-1]));
        }
    }
    struct Blend<B: Backend> {
        student: std::vec::IntoIter<Tensor<B, 1>>,
        m: f64,
    }
    impl<B: Backend> ModuleMapper<B> for Blend<B> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, t, mapper) = param.consume();
            let s = self.student.next().expect("teacher and student share one architecture");
            let blended = t.clone().detach() * self.m + s.reshape(t.shape()) * (1.0 - self.m);
            Param::from_mapped_value(id, blended, mapper)
        }
    }
    let mut collect = Collect(Vec::new());
    student.visit(&mut collect);
    teacher.map(&mut Blend {
        student: collect.0.into_iter(),
        m,
    })
}

#[cfg(test)]
impl<B: Backend> Dino<B> {
    /// A DINO model on the tests' tiny ViT: a head of 32 prototypes over a 100-update run.
    pub(crate) fn tiny(device: &B::Device) -> Self {
        use rand::SeedableRng;
        let cfg = DinoConfig::new()
            .with_prototypes(32)
            .with_hidden_dim(24)
            .with_bottleneck_dim(8);
        let vit = crate::model::objective::test_support::tiny_vit();
        Self::new(&vit, &cfg, 100, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0), device)
    }
}

#[cfg(test)]
backend_tests! {
    use super::*;
    use crate::model::objective::Negatives;
    use burn::module::AutodiffModule;
    use burn::optim::GradientsParams;
    use burn::tensor::Distribution;

    /// Random 32 px global crops and `locals` 16 px local crops of `b` images at update `step`.
    fn batch<B: Backend>(b: usize, locals: usize, step: u64, device: &B::Device) -> MimBatch<B, Unmasked> {
        B::seed(device, 7);
        let crop = |side: usize| Tensor::<B, 4>::random([b, 3, side, side], Distribution::Normal(0.0, 1.0), device);
        let mut views = vec![crop(32)];
        views.extend((0..locals).map(|_| crop(16)));
        MimBatch {
            images: crop(32),
            targets: None,
            masks: Unmasked,
            views,
            step,
            negatives: Negatives::Local,
        }
    }

    fn values<const D: usize, B: Backend>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap()
    }

    #[test]
    fn the_loss_is_the_cross_entropy_over_every_pair_of_other_crops() {
        // By hand: the teacher's softmax of (t - c) / temp on each global crop against the
        // student's log-softmax at 0.1 on every other crop, over 2 x (views - 1) pairs.
        let device = Default::default();
        let mut model = Dino::<TestBackend>::tiny(&device);
        model.center = Param::from_tensor(Tensor::random([32], Distribution::Normal(0.0, 0.3), &device));
        let b = batch::<TestBackend>(3, 2, 4, &device);
        let globals = Tensor::cat(vec![b.images.clone(), b.views[0].clone()], 0);
        let t = values(Dino::logits(&model.encoder, &model.teacher_head, globals.clone(), Mode::Eval, false));
        let mut s = values(Dino::logits(&model.student, &model.student_head, globals, Mode::Eval, false));
        let locals = Tensor::cat(b.views[1..].to_vec(), 0);
        s.extend(values(Dino::logits(&model.student, &model.student_head, locals, Mode::Eval, false)));
        let c = values(model.center.val());
        let temp = model.teacher_temp(4);
        let softmax = |row: &[f32], shift: &[f32], temp: f64| -> Vec<f64> {
            let z: Vec<f64> = row.iter().zip(shift).map(|(v, c)| (*v - *c) as f64 / temp).collect();
            let m = z.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.iter().map(|v| v / sum).collect()
        };
        let (k, n) = (32, 3);
        let zero = vec![0f32; k];
        let mut total = 0.0;
        for iq in 0..2 {
            for v in (0..4).filter(|&v| v != iq) {
                for i in 0..n {
                    let q = softmax(&t[(iq * n + i) * k..(iq * n + i + 1) * k], &c, temp);
                    let p = softmax(&s[(v * n + i) * k..(v * n + i + 1) * k], &zero, 0.1);
                    total -= q.iter().zip(&p).map(|(q, p)| q * p.ln()).sum::<f64>();
                }
            }
        }
        let want = total / (n * 6) as f64;
        let got = model.forward(&b, Mode::Eval).loss.into_scalar().elem::<f64>();
        assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "{got} vs {want}");
    }

    #[test]
    fn the_teacher_is_the_ema_of_the_student_and_the_centre_follows_the_batch_mean() {
        let device = Default::default();
        let model = Dino::<TestBackend>::tiny(&device);
        // A student that has moved: the teacher starts as its copy, under other parameter ids.
        let mut moved = model.clone();
        moved.student = moved.student.clone().map(&mut Shift);
        assert_ne!(model.student.cls_token.id, model.encoder.cls_token.id);
        let (t0, s1) = (values(model.encoder.cls_token.val()), values(moved.student.cls_token.val()));
        assert_ne!(t0, s1);
        let mean: Vec<f64> = (0..32).map(|i| i as f64 / 10.0).collect();
        let step = 40;
        let m = moved.momentum(step);
        assert!(m > 0.996 && m < 1.0, "{m}");
        let after = moved.after_update(step, Some(&mean));
        let t1 = values(after.encoder.cls_token.val());
        for ((a, t), s) in t1.iter().zip(&t0).zip(&s1) {
            let want = m * *t as f64 + (1.0 - m) * *s as f64;
            assert!((*a as f64 - want).abs() < 1e-6, "{a} vs {want}");
        }
        // The centre (zero at the start) moved a tenth of the way to the batch mean.
        for (c, v) in values(after.center.val()).iter().zip(&mean) {
            assert!((*c as f64 - 0.1 * v).abs() < 1e-6, "{c} vs {v}");
        }
        assert_eq!(Dino::<TestBackend>::tiny(&device).momentum(100), 1.0);
    }

    /// Adds 0.5 to every parameter.
    struct Shift;
    impl<B: Backend> ModuleMapper<B> for Shift {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, t, mapper) = param.consume();
            Param::from_mapped_value(id, t + 0.5, mapper)
        }
    }

    #[test]
    fn only_the_student_trains_and_its_prototypes_wait_out_the_frozen_share() {
        let device = Default::default();
        // One update of 300 frozen (DINO's first of 300 epochs).
        let model = Dino::<TestAutodiff>::tiny(&device).with_steps(300);
        for (step, frozen) in [(0, true), (1, false)] {
            let out = model.forward(&batch(2, 2, step, &device), Mode::train(1));
            let grads = out.loss.backward();
            assert!(model.student.cls_token.grad(&grads).is_some());
            assert!(model.student.pos_embed.grad(&grads).is_some(), "the local crops' resized positions train");
            assert!(model.encoder.cls_token.grad(&grads).is_none(), "the teacher follows by EMA only");
            assert!(model.teacher_head.last_layer.grad(&grads).is_none());
            assert_eq!(model.student_head.last_layer.grad(&grads).is_none(), frozen, "step {step}");
        }
    }

    #[test]
    fn a_few_steps_on_one_batch_lower_the_loss() {
        let device = Default::default();
        let mut model = Dino::<TestAutodiff>::tiny(&device).with_steps(1000);
        let b = batch::<TestAutodiff>(4, 2, 10, &device);
        let mut opt = burn::optim::SgdConfig::new().init::<TestAutodiff, Dino<TestAutodiff>>();
        let mut losses = Vec::new();
        for step in 0..8 {
            let out = model.forward(&b, Mode::train(step));
            losses.push(out.loss.clone().into_scalar().elem::<f64>());
            let grads = GradientsParams::from_grads(out.loss.backward(), &model);
            model = burn::optim::Optimizer::step(&mut opt, 0.5, model, grads);
        }
        assert!(losses[7] < losses[0], "{losses:?}");
        let _ = model.valid();
    }
}

#[cfg(test)]
impl<B: Backend> Dino<B> {
    fn with_steps(mut self, steps: u64) -> Self {
        self.steps = steps;
        self
    }
}
