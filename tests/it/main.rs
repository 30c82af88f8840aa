//! Integration tests: the real `bgd` and `bgctl` binaries, real child
//! processes, real sockets, real signals and real HTTP load.

mod harness;
mod load;

mod canary;
mod contain;
mod deb;
mod failures;
mod faults;
mod fleet;
mod gate;
mod inherit;
mod kept;
mod lifecycle;
mod metrics;
mod operations;
mod releases;
mod servers;
mod systemd;
mod watch;
