//! Integration tests of the pipeline: each adapter on its native layout built in a temp dir
//! from the real metadata in `../shared/fixtures`, the real Imagenette and COCO subsets, bad
//! input, resume after a kill, and job-array workers.

mod adapters;
mod bad_input;
mod common;
mod layering;
mod real_data;
mod recipes;
mod resume;
mod vocab;
