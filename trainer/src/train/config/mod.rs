//! Training configuration: command-line option groups shared by `trainer pretrain` and
//! `trainer finetune`, resolved once against the dataset (its manifest and recipe: Table 3's
//! epochs, section 5.5's settings for the smallest datasets, Table 9's fine-tuning recipe),
//! presets and learning-rate scaling into a `PretrainConfig` or `FinetuneConfig` that is
//! printed, written to the run folder and never changed afterwards. Every flag overrides the
//! recipe; what neither sets comes from BEiT or timm, named as such below.

mod finetune;
mod nodes;
mod pretrain;
mod run;
mod schedule;
mod segment;

pub use finetune::*;
pub use nodes::*;
pub use pretrain::*;
pub use run::*;
pub use schedule::*;
pub use segment::*;

/// The encoder's position embeddings (`--pos-embed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PosEmbed {
    /// Learned, initialized from a truncated normal (BEiT, timm).
    Learned,
    /// MAE's fixed 2-D sin-cos table, not trained: what the paper's detection backbone uses,
    /// and what a grid other than the pre-training one interpolates best.
    Sincos,
}

impl PosEmbed {
    pub fn sinusoidal(self) -> bool {
        self == PosEmbed::Sincos
    }
}

/// clap's parser for every real-valued flag: NaN and the infinities are refused as they are
/// parsed (a NaN would slip past range checks and be written to config.json as `null`).
pub fn finite(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(format!("{v} is not a finite number")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::parallel::{Cluster, Endpoint};

    #[test]
    fn real_valued_flags_refuse_nan_and_infinities() {
        assert_eq!(finite("0.5"), Ok(0.5));
        assert_eq!(finite(" -2e-3 "), Ok(-2e-3));
        for bad in ["nan", "NaN", "inf", "-inf", "infinity", "1e999"] {
            assert!(finite(bad).unwrap_err().contains("not a finite number"), "{bad}");
        }
        assert!(finite("half").is_err());
    }

    #[test]
    fn the_lr_rules_agree_at_the_reference_batch_and_part_below_it() {
        for rule in [LrScaling::Linear, LrScaling::Sqrt] {
            assert_eq!(rule.factor(1024, 1024), 1.0);
        }
        assert_eq!(LrScaling::Linear.factor(32, 1024), 1.0 / 32.0);
        assert!((LrScaling::Sqrt.factor(32, 1024) - 32f64.sqrt().recip()).abs() < 1e-15);
        assert_eq!(LrScaling::Sqrt.factor(4096, 1024), 2.0);
        // Runs written before the rule was recorded scaled linearly.
        assert_eq!(LrScaling::default(), LrScaling::Linear);
    }

    #[test]
    fn endpoints_parse_and_node_options_resolve_to_a_place_in_the_run() {
        let e = Endpoint::parse("ws://node-a:29500").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("node-a", 29500));
        assert_eq!(e.to_string(), "node-a:29500");
        for bad in ["node-a", "node-a:http", ":29500", "a:70000"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            Some(p)
        };
        let secret = file("secret", "0123456789abcdef-0123\n");
        let args = |nodes, rank, master: Option<&str>, secret: Option<std::path::PathBuf>| NodeArgs {
            num_nodes: nodes,
            node_rank: rank,
            master: master.map(str::to_string),
            node_address: None,
            cluster_secret_file: secret,
            collective_timeout: 60.0,
        };
        assert_eq!(args(1, 0, None, None).resolve().unwrap(), Cluster::ONE);
        let c = args(3, 2, Some("127.0.0.1:4000"), secret.clone()).resolve().unwrap();
        let net = c.network.unwrap();
        assert_eq!((c.nodes, c.node, net.address.port), (3, 2, 4003));
        assert_eq!(
            net.secret.0, b"0123456789abcdef-0123",
            "the trailing newline is dropped"
        );
        assert!(
            !format!("{net:?}").contains("0123456789"),
            "the secret is never printed"
        );
        let err = args(2, 0, None, secret.clone()).resolve().unwrap_err().to_string();
        assert!(err.contains("--master"), "{err}");
        let short = file("short", "too short\n");
        let err = args(2, 0, Some("a:1"), short).resolve().unwrap_err().to_string();
        assert!(
            err.contains("--cluster-secret-file") && err.contains("at least 16"),
            "{err}"
        );
        let folder = Some(dir.path().to_path_buf());
        let err = args(2, 0, Some("a:1"), folder).resolve().unwrap_err().to_string();
        assert!(err.contains("regular file"), "{err}");
        if std::env::var_os(crate::train::config::SECRET_ENV).is_none() {
            let err = args(2, 0, Some("a:1"), None).resolve().unwrap_err().to_string();
            assert!(err.contains("need a secret"), "{err}");
        }
        let err = args(2, 2, Some("a:1"), secret).resolve().unwrap_err().to_string();
        assert!(err.contains("--node-rank \"2\""), "{err}");
    }
}
