//! The visual vocabulary's self-describing header, stored in the `__metadata__` of its
//! safetensors file beside the `embeddings` tensor ([V, d] f32, unit rows).
//!
//! Everything that decides which token a patch gets is here, so the pipeline's pre-tokenizer
//! and the trainer's on-device tokenizer compute the same tokens from the same file.

use serde::{Deserialize, Serialize};

/// Bumped when the header or the preprocessing's meaning changes.
pub const VOCAB_VERSION: u32 = 1;
/// Key of the JSON header in the safetensors `__metadata__` map.
pub const VOCAB_HEADER_KEY: &str = "splitmask_vocab";
/// Name of the [V, d] tensor.
pub const EMBEDDINGS: &str = "embeddings";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VocabKind {
    /// V vectors with i.i.d. uniform(-1, 1) components, normalized.
    RandomProjection,
    /// V patches sampled uniformly among the train split's patches, normalized.
    RandomPatches,
    /// Centroids of spherical k-means over patches sampled from the train split.
    Kmeans,
}

impl VocabKind {
    pub fn name(self) -> &'static str {
        match self {
            VocabKind::RandomProjection => "random_projection",
            VocabKind::RandomPatches => "random_patches",
            VocabKind::Kmeans => "kmeans",
        }
    }

    /// Whether an entry looks like an image patch (sampled patches, centroids of patches);
    /// random projections are noise when drawn.
    pub fn draws_as_patches(self) -> bool {
        !matches!(self, VocabKind::RandomProjection)
    }
}

/// How an image becomes patch vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// Side of the square view that is cut into patches (112: a 14x14 grid of 8x8 patches).
    pub view_size: u32,
    pub patch_size: u32,
    /// Side of the encoder's view the tokenizer's view is derived from (224).
    pub source_view_size: u32,
    /// How `source_view_size` becomes `view_size`: "box2" = mean of each 2x2 block.
    pub downsample: String,
    /// Per-channel mean and std applied to pixels in [0, 1] before a patch is flattened.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Flattening order of a patch's values.
    pub layout: String,
    /// Rule for a patch whose normalized vector has zero norm.
    pub zero_patch: String,
}

impl Preprocessing {
    pub fn paper() -> Self {
        Preprocessing {
            view_size: 112,
            patch_size: 8,
            source_view_size: 224,
            downsample: "box2".into(),
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            layout: "row-major (y, x, channel)".into(),
            zero_patch: "token 0 (every cosine is 0; argmax takes the first)".into(),
        }
    }

    pub fn dim(&self) -> usize {
        (self.patch_size * self.patch_size * 3) as usize
    }

    /// Whether the geometry is one the tokenizers can run: checked on every header read, since
    /// a vocabulary file is outside input (a zero patch or a huge view would divide by zero or
    /// allocate gigabytes before any other check).
    pub fn check(&self) -> Result<(), String> {
        let (view, patch, source) = (self.view_size, self.patch_size, self.source_view_size);
        if !(1..=64).contains(&patch) {
            return Err(format!("patch_size {patch}: must be 1..=64"));
        }
        if !(patch..=2048).contains(&view) || view % patch != 0 {
            return Err(format!(
                "view_size {view}: a multiple of patch_size {patch}, at most 2048"
            ));
        }
        if self.downsample != "box2" || u64::from(source) != 2 * u64::from(view) {
            return Err(format!(
                "downsample {:?} from source_view_size {source}: only \"box2\" from twice view_size {view}",
                self.downsample
            ));
        }
        let finite = self.mean.iter().chain(&self.std).all(|v| v.is_finite());
        if !finite || self.std.iter().any(|s| *s <= 0.0) {
            return Err(format!("mean {:?} / std {:?}: finite, std > 0", self.mean, self.std));
        }
        Ok(())
    }

    pub fn grid(&self) -> usize {
        (self.view_size / self.patch_size) as usize
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KmeansStats {
    pub sample: u64,
    pub iterations: u32,
    /// Sum over points of 1 - cos(x, centroid), per iteration.
    pub inertia: Vec<f64>,
    pub reseeded: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VocabHeader {
    pub version: u32,
    pub kind: VocabKind,
    pub seed: u64,
    pub size: usize,
    pub dim: usize,
    pub preprocessing: Preprocessing,
    /// sha256 of the `manifest.json` of the dataset it was built from (None: data-free).
    pub source_manifest_sha256: Option<String>,
    pub kmeans: Option<KmeansStats>,
}
