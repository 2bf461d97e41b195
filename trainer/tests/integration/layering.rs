//! The trainer's layer table (see `src/lib.rs`): model <- data <- eval <- train <- outputs.

#[path = "../../../tests/layering.rs"]
mod checker;

#[test]
fn modules_import_only_their_own_layer_or_below_and_never_in_a_loop() {
    checker::self_test();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    checker::assert_layered(
        "trainer",
        &src,
        &[
            ("error", 0),
            ("seed", 0),
            ("progress", 0),
            ("backend", 0),
            ("kernels", 0),
            ("model", 1),
            ("data", 2),
            ("eval", 3),
            ("train", 4),
            ("report", 5),
            ("export", 5),
            ("bench", 5),
            ("commands", 6),
        ],
    );
}

#[test]
fn no_function_is_longer_than_clippy_allows() {
    checker::self_test_lengths();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    checker::assert_short_functions("trainer", &src);
}
