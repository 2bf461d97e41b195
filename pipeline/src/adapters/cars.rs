//! Stanford Cars, in the official devkit form (`devkit/cars_meta.mat`,
//! `devkit/cars_train_annos.mat`, `cars_test_annos_withlabels.mat` or the unlabeled
//! `devkit/cars_test_annos.mat`; images in `cars_train/` and `cars_test/`) or the common CSV
//! form (`anno_train.csv`, `anno_test.csv`: `file,x1,y1,x2,y2,class` with a header; class names
//! from `names.csv` or the devkit when present). Classes are 1-based in both; labels are 0-based.

use std::path::{Path, PathBuf};

use super::listing::{read_lines, Listing, SourceImage};
use crate::error::{PipelineError, Result};
use crate::matfile::{read_variable, MatValue};

pub fn list(root: &Path) -> Result<Listing> {
    let devkit = root.join("devkit");
    let mut listing = if devkit.join("cars_train_annos.mat").is_file() {
        list_devkit(root, &devkit)?
    } else if root.join("anno_train.csv").is_file() {
        list_csv(root)?
    } else {
        return Err(PipelineError::MissingMetadata {
            path: devkit.join("cars_train_annos.mat"),
            hint: "Stanford Cars needs the devkit (devkit/cars_*.mat) or anno_train.csv".into(),
        });
    };
    listing.skip_unlisted(root, &["cars_train", "cars_test"], "none", "the annotation files")?;
    Ok(listing)
}

fn meta_names(path: &Path) -> Result<Vec<String>> {
    match read_variable(path, "class_names")? {
        MatValue::Cell { items, .. } => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| PipelineError::BadField {
                    path: path.to_path_buf(),
                    field: "class_names".into(),
                    message: "expected a cell array of strings".into(),
                })
            })
            .collect(),
        _ => Err(PipelineError::BadField {
            path: path.to_path_buf(),
            field: "class_names".into(),
            message: "expected a cell array".into(),
        }),
    }
}

fn list_devkit(root: &Path, devkit: &Path) -> Result<Listing> {
    let meta = super::listing::require(devkit.join("cars_meta.mat"), "Stanford Cars class names")?;
    let mut listing = Listing::new("stanford_cars", meta_names(&meta)?);
    let n_classes = listing.class_names.len() as i32;
    let test_labeled = [
        root.join("cars_test_annos_withlabels.mat"),
        devkit.join("cars_test_annos_withlabels.mat"),
    ]
    .into_iter()
    .find(|p| p.is_file());
    let test = test_labeled.unwrap_or_else(|| devkit.join("cars_test_annos.mat"));
    for (split, dir, path) in [
        ("train", "cars_train", devkit.join("cars_train_annos.mat")),
        ("test", "cars_test", test),
    ] {
        if !path.is_file() {
            if split == "test" {
                continue;
            }
            return Err(PipelineError::MissingMetadata {
                path,
                hint: "Stanford Cars devkit annotations".into(),
            });
        }
        let MatValue::Struct { elements, .. } = read_variable(&path, "annotations")? else {
            return Err(bad_field(&path, "annotations", "expected a struct array"));
        };
        for (i, el) in elements.iter().enumerate() {
            let num = |f: &str| {
                el.get(f)
                    .and_then(MatValue::scalar)
                    .ok_or_else(|| bad_field(&path, &format!("annotations({}).{f}", i + 1), "missing or not a number"))
            };
            let fname = el.get("fname").and_then(MatValue::as_str).ok_or_else(|| {
                bad_field(
                    &path,
                    &format!("annotations({}).fname", i + 1),
                    "missing or not a string",
                )
            })?;
            let label = if el.contains_key("class") {
                num("class")? as i32 - 1
            } else {
                -1
            };
            if label >= n_classes {
                return Err(bad_field(
                    &path,
                    &format!("annotations({}).class", i + 1),
                    &format!("class {} > {n_classes}", label + 1),
                ));
            }
            let bbox = [
                num("bbox_x1")? as i32,
                num("bbox_y1")? as i32,
                num("bbox_x2")? as i32,
                num("bbox_y2")? as i32,
            ];
            let mut img = SourceImage::new(split, format!("{dir}/{fname}"), label);
            img.bbox = Some(bbox);
            listing.images.push(img);
        }
    }
    Ok(listing)
}

fn bad_field(path: &Path, field: &str, message: &str) -> PipelineError {
    PipelineError::BadField {
        path: path.to_path_buf(),
        field: field.to_string(),
        message: message.to_string(),
    }
}

fn list_csv(root: &Path) -> Result<Listing> {
    let names_csv = root.join("names.csv");
    let meta = root.join("devkit/cars_meta.mat");
    let class_names: Vec<String> = if names_csv.is_file() {
        read_lines(&names_csv)?.into_iter().map(|(_, l)| l).collect()
    } else if meta.is_file() {
        meta_names(&meta)?
    } else {
        (1..=196).map(|c| format!("class_{c}")).collect()
    };
    let n_classes = class_names.len() as i32;
    let mut listing = Listing::new("stanford_cars", class_names);
    for (split, dir) in [("train", "cars_train"), ("test", "cars_test")] {
        let path: PathBuf = root.join(format!("anno_{split}.csv"));
        if !path.is_file() {
            continue;
        }
        let mut reader = csv::Reader::from_path(&path).map_err(|source| PipelineError::Csv {
            path: path.clone(),
            source,
        })?;
        for (i, row) in reader.records().enumerate() {
            let row = row.map_err(|source| PipelineError::Csv {
                path: path.clone(),
                source,
            })?;
            let line = i + 2;
            let bad = |message: &str| PipelineError::BadLine {
                path: path.clone(),
                line,
                message: message.to_string(),
                text: row.iter().collect::<Vec<_>>().join(","),
            };
            if row.len() < 6 {
                return Err(bad("expected file,x1,y1,x2,y2,class"));
            }
            let ints: Vec<i32> = (1..6)
                .map(|c| row[c].trim().parse::<i32>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| bad("bbox and class must be integers"))?;
            if ints[4] < 1 || ints[4] > n_classes {
                return Err(bad(&format!("class must be 1..={n_classes}")));
            }
            let mut img = SourceImage::new(split, format!("{dir}/{}", row[0].trim()), ints[4] - 1);
            img.bbox = Some([ints[0], ints[1], ints[2], ints[3]]);
            listing.images.push(img);
        }
    }
    Ok(listing)
}
