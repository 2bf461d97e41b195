//! The segmentation model on real CamVid frames: a micro ViT with the multi-scale adapter and
//! UperNet overfits four frames, scored by the confusion-matrix mIoU.

use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use image::imageops::FilterType;
use rand::SeedableRng;
use trainer::data::augment::to_chw;
use trainer::eval::segmentation::Confusion;
use trainer::model::segmenter::{pixel_cross_entropy, predict, Segmenter, SegmenterConfig};
use trainer::model::vit::{Mode, VitConfig};
use trainer::CpuAutodiff;

const SIDE: u32 = 64;
const FRAMES: [&str; 4] = ["0001TP_006690", "0001TP_006720", "0001TP_006750", "0001TP_006780"];

/// The centre square of each frame at 64 px (image Catmull-Rom, labels nearest) as a
/// normalized batch and its label maps.
fn frames(root: &std::path::Path) -> (Vec<f32>, Vec<u8>) {
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for f in FRAMES {
        let img = image::open(root.join(format!("train/{f}.jpg"))).unwrap().to_rgb8();
        let map = image::open(root.join(format!("trainannot/{f}.png")))
            .unwrap()
            .to_luma8();
        let (w, h) = img.dimensions();
        let s = w.min(h);
        let (x, y) = ((w - s) / 2, (h - s) / 2);
        let img = image::imageops::crop_imm(&img, x, y, s, s).to_image();
        let map = image::imageops::crop_imm(&map, x, y, s, s).to_image();
        to_chw(
            &image::imageops::resize(&img, SIDE, SIDE, FilterType::CatmullRom),
            &mut pixels,
        );
        labels.extend(image::imageops::resize(&map, SIDE, SIDE, FilterType::Nearest).into_raw());
    }
    (pixels, labels)
}

fn scores(model: &Segmenter<CpuAutodiff>, x: Tensor<CpuAutodiff, 4>, labels: &[u8]) -> (f64, f64) {
    let p: Vec<u8> = predict(model.forward(x, Mode::Eval))
        .into_data()
        .iter::<i64>()
        .map(|v| v as u8)
        .collect();
    let mut c = Confusion::new(11);
    c.add(labels, &p);
    let s = c.scores();
    (s.miou, s.pixel_accuracy)
}

/// 11 classes and the ignore label 11. After 150 full-batch AdamW steps the micro model
/// reproduces the frames it trained on: mIoU above 0.5 and pixel accuracy above 0.85, where
/// it starts below 0.15 (measured: see the assertion messages).
#[test]
fn a_micro_segmenter_overfits_four_camvid_frames() {
    let Some(root) = crate::shared("data/camvid") else {
        return;
    };
    let device = Default::default();
    let (pixels, labels) = frames(&root);
    assert!(labels.iter().all(|&l| l <= 11));
    let n = FRAMES.len();
    let x = Tensor::<CpuAutodiff, 4>::from_data(TensorData::new(pixels, [n, 3, SIDE as usize, SIDE as usize]), &device);
    let targets: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    let y =
        Tensor::<CpuAutodiff, 3, Int>::from_data(TensorData::new(targets, [n, SIDE as usize, SIDE as usize]), &device);
    let vit = VitConfig::cpu_tiny()
        .with_dim(64)
        .with_depth(4)
        .with_heads(4)
        .with_drop_path(0.0);
    let cfg = SegmenterConfig::for_vit(vit, 11).with_channels(32);
    let mut model: Segmenter<CpuAutodiff> = cfg.init(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0), &device);
    let (start_miou, _) = scores(&model, x.clone(), &labels);
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let mut losses = Vec::new();
    for step in 0..150u64 {
        let mode = Mode::Train {
            seed: step,
            first: 0,
            copies: 1,
        };
        let loss = pixel_cross_entropy(model.forward(x.clone(), mode), y.clone());
        losses.push(loss.clone().into_scalar().to_f64());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(2e-3, model, grads);
    }
    let (miou, acc) = scores(&model, x, &labels);
    eprintln!(
        "segmenter: mIoU {start_miou:.3} -> {miou:.3}, pixel accuracy {acc:.3}, loss {:.3} -> {:.3}",
        losses[0], losses[149]
    );
    assert!(losses[149] < losses[0] * 0.5, "{losses:?}");
    assert!(start_miou < 0.15, "start {start_miou}");
    assert!(miou > 0.5 && acc > 0.85, "mIoU {miou}, pixel accuracy {acc}");
}
