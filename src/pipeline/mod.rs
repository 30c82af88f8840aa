//! The release pipeline: bringing a build up in a color, from the copy to
//! readiness. Nothing here decides what happens next (the core does) or
//! touches the live color.
//!
//! - `prepare`     the task that brings a color up: validate, stage, prepare hooks, start, wait until ready
//! - `stage`       keeping a build and copying it into a color directory atomically
//! - `releases`    kept releases on disk: sizes, listing, taking over an older root
//! - `runnable`    whether a config's programs resolve and may run (`--check`, reload)
//! - `fingerprint` a cheap summary of a build tree, to tell two builds apart
//! - `hooks`       `[hooks]` prepare and after_live commands
//! - `health`      readiness checks that reach the new color alone
//! - `watch`       auto-release: notify events coalesced into settled-tree events
//! - `walk`        iterative walks of a tree that never follow a symlink out of it

pub(crate) mod fingerprint;
pub(crate) mod health;
pub(crate) mod hooks;
pub(crate) mod prepare;
pub(crate) mod releases;
pub mod runnable;
pub(crate) mod stage;
/// A kept copy's manifest (read by the fuzz target for bgd's own files).
pub use stage::manifest;
pub(crate) mod walk;
pub(crate) mod watch;
