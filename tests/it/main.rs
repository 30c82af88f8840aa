//! Integration tests: the real `bgd` and `bgctl` binaries, real child
//! processes, real sockets, real signals and real HTTP load.

mod harness;
mod load;

mod canary;
mod deb;
mod failures;
mod faults;
mod gate;
mod inherit;
mod kept;
mod lifecycle;
mod operations;
mod releases;
mod servers;
mod systemd;
mod watch;
