//! Our side of bench/kmeans (driven by bench/kmeans/run.py): samples N patches from a
//! prepared dataset, writes them and the initial centroids as .npy for faiss, runs k-means
//! from those centroids, then times tokenization of the N patches against the result.
//! Prints one JSON line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use pipeline::vocab::kmeans::{kmeans, KmeansConfig, KmeansInit};
use pipeline::vocab::nearest::argmax_dot;
use pipeline::vocab::{sample_train_patches, train_patch_count};
use rand::seq::index::sample;
use rand::SeedableRng;
use schemas::Preprocessing;

fn write_npy(path: &Path, data: &[f32], rows: usize, cols: usize) {
    let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let pad = 64 - (10 + header.len() + 1) % 64;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(b"\x93NUMPY\x01\x00").unwrap();
    f.write_all(&((header.len() + pad + 1) as u16).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    f.write_all(&vec![b' '; pad]).unwrap();
    f.write_all(b"\n").unwrap();
    for v in data {
        f.write_all(&v.to_le_bytes()).unwrap();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].clone())
            .unwrap_or_else(|| panic!("missing {name}"))
    };
    let data = PathBuf::from(get("--data"));
    let n: usize = get("--n").parse().unwrap();
    let k: usize = get("--k").parse().unwrap();
    let iterations: u32 = get("--iterations").parse().unwrap();
    let out = PathBuf::from(get("--out"));
    let p = Preprocessing::paper();
    let d = p.dim();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let total = train_patch_count(&data, &p).unwrap();
    let mut picks = sample(&mut rng, total, n.min(total)).into_vec();
    picks.sort_unstable();
    let x = sample_train_patches(&data, &picks, &p, false).unwrap();
    let n = x.len() / d;
    let init: Vec<f32> = sample(&mut rng, n, k)
        .into_iter()
        .flat_map(|i| x[i * d..(i + 1) * d].to_vec())
        .collect();
    write_npy(&out.join("x.npy"), &x, n, d);
    write_npy(&out.join("c0.npy"), &init, k, d);

    let mut cfg = KmeansConfig::new(k, iterations, 0);
    cfg.init = KmeansInit::Given(init);
    cfg.max_points_per_centroid = usize::MAX;
    let start = Instant::now();
    let r = kmeans(&x, d, &cfg).unwrap();
    let secs = start.elapsed().as_secs_f64();
    write_npy(&out.join("centroids.npy"), &r.centroids, k, d);

    let start = Instant::now();
    let (tokens, _) = argmax_dot(&x, &r.centroids, d);
    let tok_secs = start.elapsed().as_secs_f64();
    let tok_path = out.join("tokens.u32");
    std::fs::write(
        &tok_path,
        tokens.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
    // faiss reports the objective of the assignment made with the centroids it returns.
    let final_obj: f64 = {
        let (_, best) = argmax_dot(&x, &r.centroids, d);
        best.iter().map(|&b| 2.0 - 2.0 * b as f64).sum()
    };
    println!(
        "{}",
        serde_json::json!({
            "n": n, "k": k, "d": d, "iterations": iterations, "threads": rayon::current_num_threads(),
            "seconds": secs, "inertia": r.inertia, "final_objective": final_obj,
            "tokenize_seconds": tok_secs, "patches_per_s": n as f64 / tok_secs,
        })
    );
}
