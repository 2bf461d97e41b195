//! The pre-training methods by name: the one place a new method is added (an arm of [`Method`]
//! and of [`with_method`], and its options in [`MethodOptions`] where it has any). Everything
//! else (the training loop, the benchmark, the tests) reaches a method's model through
//! [`with_method`], generically over [`Objective`].

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::model::beit::Beit;
use crate::model::dino::{Dino, DinoConfig};
use crate::model::mae::{Mae, MaeConfig};
use crate::model::objective::{MethodSpec, Objective};
use crate::model::splitmask::{SplitMask, SplitMaskConfig};
use crate::model::vit::Pool;

/// Which pre-training method; selects the model and the masks drawn for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Beit,
    Splitmask,
    Mae,
    Dino,
}

impl Method {
    /// The name used in configs, results and reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Beit => "beit",
            Method::Splitmask => "splitmask",
            Method::Mae => "mae",
            Method::Dino => "dino",
        }
    }

    /// The method's constants, read off its [`Objective`] without building a model.
    pub fn traits(self) -> MethodTraits {
        struct Traits;
        impl<B: AutodiffBackend> WithMethod<B> for Traits {
            type Output = MethodTraits;
            fn run<M>(self, _: &M::Options) -> MethodTraits
            where
                M: Objective<B> + AutodiffModule<B>,
                M::InnerModule: Objective<B::InnerBackend, Options = M::Options>,
            {
                MethodTraits {
                    token_targets: M::TOKEN_TARGETS,
                    pool: M::POOL,
                    heads: M::HEADS,
                }
            }
        }
        with_method::<crate::backend::CpuAutodiff, _>(self, &MethodOptions::default(), Traits)
    }
}

/// A method's [`Objective`] constants, for code that holds a [`Method`] value, not its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodTraits {
    /// Whether it predicts visual tokens and needs a vocabulary ([`Objective::TOKEN_TARGETS`]).
    pub token_targets: bool,
    /// How its frozen encoder's tokens are pooled for k-NN and probes ([`Objective::POOL`]).
    pub pool: Pool,
    /// What fine-tuning drops from its checkpoints ([`Objective::HEADS`]).
    pub heads: &'static [&'static str],
}

/// Every method's own options, as the run's config.json records them (flattened into the
/// pre-training configuration; a method without options has no field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodOptions {
    pub splitmask: SplitMaskConfig,
    /// Absent from runs older than MAE.
    #[serde(default = "MaeConfig::new")]
    pub mae: MaeConfig,
    /// Absent from runs older than DINO.
    #[serde(default = "DinoConfig::new")]
    pub dino: DinoConfig,
}

impl Default for MethodOptions {
    fn default() -> Self {
        MethodOptions {
            splitmask: SplitMaskConfig::new(),
            mae: MaeConfig::new(),
            dino: DinoConfig::new(),
        }
    }
}

/// Generic code over a method's model type (`M`), run by [`with_method`]: Rust has no generic
/// closures, so the code is a `run` method.
pub trait WithMethod<B: AutodiffBackend> {
    type Output;

    fn run<M>(self, options: &M::Options) -> Self::Output
    where
        M: Objective<B> + AutodiffModule<B>,
        M::InnerModule: Objective<B::InnerBackend, Options = M::Options>;
}

/// Runs `work` with the model type of `method` and its options.
pub fn with_method<B: AutodiffBackend, W: WithMethod<B>>(
    method: Method,
    options: &MethodOptions,
    work: W,
) -> W::Output {
    match method {
        Method::Beit => work.run::<Beit<B>>(&()),
        Method::Splitmask => work.run::<SplitMask<B>>(&options.splitmask),
        Method::Mae => work.run::<Mae<B>>(&options.mae),
        Method::Dino => work.run::<Dino<B>>(&options.dino),
    }
}

/// [`Objective::validate`] of `method` on `spec`, with the method's own options. Validation
/// involves no tensor: it is run with the CPU backend's types.
pub fn validate(method: Method, spec: &MethodSpec<'_, MethodOptions>) -> Result<(), String> {
    struct Validate<'a>(&'a MethodSpec<'a, MethodOptions>);
    impl<B: AutodiffBackend> WithMethod<B> for Validate<'_> {
        type Output = Result<(), String>;
        fn run<M>(self, options: &M::Options) -> Result<(), String>
        where
            M: Objective<B> + AutodiffModule<B>,
            M::InnerModule: Objective<B::InnerBackend, Options = M::Options>,
        {
            let s = self.0;
            M::validate(&MethodSpec {
                vit: s.vit,
                vocab_size: s.vocab_size,
                masking: s.masking,
                mask_count: s.mask_count,
                steps: s.steps,
                options,
            })
        }
    }
    with_method::<crate::backend::CpuAutodiff, _>(method, spec.options, Validate(spec))
}
