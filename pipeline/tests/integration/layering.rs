//! The pipeline's layer table (see `src/lib.rs`).

#[path = "../../../tests/layering.rs"]
mod checker;

#[test]
fn modules_import_only_their_own_layer_or_below_and_never_in_a_loop() {
    checker::self_test();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    checker::assert_layered(
        "pipeline",
        &src,
        &[
            ("error", 0),
            ("matfile", 0),
            ("lock", 0),
            ("interrupt", 0),
            ("jpeg_entropy", 0),
            ("source", 0),
            ("adapters", 1),
            ("shard", 1),
            ("transcode", 1),
            ("views", 1),
            ("prepare", 2),
            ("recipe", 2),
            ("vocab", 3),
            ("inspect", 4),
            ("coco_json", 4),
            // The binary's subcommands (src/commands/, beside main.rs): above the whole library.
            ("commands", 5),
        ],
    );
}

#[test]
fn no_function_is_longer_than_clippy_allows() {
    checker::self_test_lengths();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    checker::assert_short_functions("pipeline", &src);
}
