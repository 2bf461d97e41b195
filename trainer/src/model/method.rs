//! The pre-training methods by name: the one place a new method is added (an arm of [`Method`]
//! and of [`with_method`], and its options in [`MethodOptions`] where it has any). Everything
//! else (the training loop, the benchmark, the tests) reaches a method's model through
//! [`with_method`], generically over [`Objective`].

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::model::beit::Beit;
use crate::model::objective::Objective;
use crate::model::splitmask::{SplitMask, SplitMaskConfig};

/// Which pre-training method; selects the model and the masks drawn for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Beit,
    Splitmask,
}

impl Method {
    /// The name used in configs, results and reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Beit => "beit",
            Method::Splitmask => "splitmask",
        }
    }
}

/// Every method's own options, as the run's config.json records them (flattened into the
/// pre-training configuration; a method without options has no field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodOptions {
    pub splitmask: SplitMaskConfig,
}

impl Default for MethodOptions {
    fn default() -> Self {
        MethodOptions {
            splitmask: SplitMaskConfig::new(),
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
    }
}
