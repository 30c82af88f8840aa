//! bgd's own files under its root: where each one lives, and writing them
//! whole.
//!
//! - `layout`   the path of everything bgd keeps in its root (paths only)
//! - `state`    `state.json` and the `live` symlink
//! - `history`  `history.json`, the last 50 releases
//! - `operator` `operator.json`, the watch pause and hold
//! - `files`    writing them keeping the previous version; notes on damage

pub mod files;
pub mod history;
pub(crate) mod layout;
pub mod operator;
pub mod state;
