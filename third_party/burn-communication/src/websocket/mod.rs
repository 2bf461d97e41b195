mod auth;
mod base;
mod client;
mod server;

pub use auth::{MIN_SECRET_LEN, set_cluster_secret};
pub use base::*;
pub use client::*;
pub use server::*;
