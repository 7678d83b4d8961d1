//! Integration tests: real git driving the real filter, each test in its own
//! temporary HOME, cache and archive.

mod common;
mod concurrency;
mod core;
mod filter_process;
mod http;
mod index_formats;
mod limits;
mod memory;
mod s3;
mod smudge;
