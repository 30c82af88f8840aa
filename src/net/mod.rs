//! Networking: the app's listening sockets and where new connections go.
//!
//! - `listen`     binding or adopting the sockets, and holding them
//! - `steer`      the classic BPF program on the `SO_REUSEPORT` group
//! - `fdstore`    sockets from socket activation and systemd's fd store
//! - `conns`      the kernel's view of a color's connections (read only)
//! - `unix_peers` a Unix listener's queued and open connections

pub(crate) mod conns;
pub mod fdstore;
pub(crate) mod listen;
pub(crate) mod steer;
pub(crate) mod unix_peers;
