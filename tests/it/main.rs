//! Integration tests: the real `bgd` and `bgctl` binaries, real child
//! processes, real sockets, real signals and real HTTP load.

mod harness;
mod load;

mod deb;
mod failures;
mod faults;
mod gate;
mod inherit;
mod lifecycle;
mod metrics;
mod operations;
mod releases;
mod systemd;
mod watch;
