//! `trainer visualize` on short pre-training runs: the grid's size, the hidden patches grey in
//! the masked column and drawn over in the prediction column, visible patches left as they are.

use image::RgbImage;
use trainer::report::reconstructions::{visualize, Drawing, VisualizeSpec, MASK_GRAY};
use trainer::CpuAutodiff;

use crate::{fixture, micro_vit, pretrain_args, run};

const GAP: u32 = 4;

/// The patches (of an 8 x 8 grid) that are entirely `colour` in the cell at column `col`, row
/// `row` of a grid of `cell` px cells, `zoom` px per image pixel.
fn patches_all(img: &RgbImage, col: u32, row: u32, cell: u32, zoom: u32, colour: [u8; 3]) -> Vec<u32> {
    let side = cell / 8;
    (0..64)
        .filter(|p| {
            let (x0, y0) = (col * (cell + GAP) + p % 8 * side, row * (cell + GAP) + p / 8 * side);
            (0..side).step_by(zoom as usize).all(|dy| {
                (0..side)
                    .step_by(zoom as usize)
                    .all(|dx| img.get_pixel(x0 + dx, y0 + dy).0 == colour)
            })
        })
        .collect()
}

fn same_patch(img: &RgbImage, a: (u32, u32), b: (u32, u32), p: u32, cell: u32) -> bool {
    let side = cell / 8;
    let origin = |(col, row): (u32, u32)| (col * (cell + GAP) + p % 8 * side, row * (cell + GAP) + p / 8 * side);
    let ((ax, ay), (bx, by)) = (origin(a), origin(b));
    (0..side).all(|dy| (0..side).all(|dx| img.get_pixel(ax + dx, ay + dy) == img.get_pixel(bx + dx, by + dy)))
}

#[test]
fn the_grid_shows_the_hidden_patches_and_what_each_method_predicts_there() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (images, zoom) = (3u32, 2u32);
    // SplitMask with a random-patches vocabulary (entries drawn, targets column), MAE (pixels).
    for (method, hidden, drawing, columns) in [("splitmask", 32, Drawing::Entries, 4), ("mae", 48, Drawing::Pixels, 3)]
    {
        let run_dir = tmp.path().join(method);
        let extra = [
            "--method",
            method,
            "--model",
            "cpu-tiny",
            "--batch-size",
            "16",
            "--max-steps",
            "3",
            "--limit-images",
            "64",
        ];
        let mut cfg = pretrain_args(&f.dir, &f.vocab_small, &run_dir, &extra)
            .resolve()
            .unwrap();
        cfg.vit = micro_vit();
        run(&cfg, false);
        let out = tmp.path().join(format!("{method}.png"));
        let spec = VisualizeSpec {
            images: images as usize,
            zoom,
            mask_seed: 5,
            crop_ratio: 1.0,
        };
        let s = visualize::<CpuAutodiff>(&run_dir, &f.dir, "val", &spec, &out, &Default::default()).unwrap();
        assert_eq!((s.drawing, s.hidden, s.images), (drawing, hidden, 3), "{method}");
        assert_eq!(s.accuracy.is_some(), method == "splitmask");
        let img = image::open(&out).unwrap().to_rgb8();
        let cell = 64 * zoom;
        assert_eq!(
            (img.width(), img.height()),
            (columns * cell + (columns - 1) * GAP, images * cell + (images - 1) * GAP),
            "{method}"
        );
        for row in 0..images {
            let grey = patches_all(&img, 1, row, cell, zoom, MASK_GRAY);
            assert_eq!(grey.len(), hidden, "{method} row {row}: the hidden patches are grey");
            let redrawn = grey
                .iter()
                .filter(|&&p| !same_patch(&img, (2, row), (1, row), p, cell))
                .count();
            assert!(
                redrawn > 0,
                "{method} row {row}: a predicted patch differs from the mask colour"
            );
            for p in (0..64).filter(|p| !grey.contains(p)) {
                assert!(
                    same_patch(&img, (2, row), (0, row), p, cell),
                    "{method} row {row}: visible patch {p} kept"
                );
            }
        }
    }
    // 256 rows of 1,024 px cells would be a gigapixel: refused before anything is computed.
    let huge = VisualizeSpec {
        images: 256,
        zoom: 16,
        mask_seed: 0,
        crop_ratio: 1.0,
    };
    let out = tmp.path().join("huge.png");
    let err = visualize::<CpuAutodiff>(&tmp.path().join("mae"), &f.dir, "val", &huge, &out, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("--zoom \"16\"") && err.contains("M pixels"), "{err}");
    assert!(!out.exists());
}
