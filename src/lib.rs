//! fcache keeps large or sensitive data files out of git history: git's
//! clean filter hands each file to fcache, which stores the bytes in a
//! content-addressed cache shared by every repository of the user (and from
//! there in an archive) and gives git a small marker instead.

pub mod archive;
pub mod cache;
pub mod clock;
pub mod commands;
pub mod config;
pub mod diagnostics;
pub mod filter;
pub mod hashing;
pub mod index;
pub mod lock;
pub mod marker;
pub mod oid;
pub mod repo;
pub mod serve;
pub mod store;
pub mod transfer;
pub mod writeback;
