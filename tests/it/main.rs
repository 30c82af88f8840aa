//! Integration tests: the real `bgd` and `bgctl` binaries, real child
//! processes, real sockets, real signals and real HTTP load.
//!
//! `cargo test` runs the unit tests and these. Each test starts the real
//! binaries in a temp dir (port 0) with the example app or a small fixture
//! app, and waits on conditions with deadlines. What each file covers:
//!
//! - `releases.rs`: 10 releases under load from 4 keep-alive and 4
//!   new-connection clients: zero failed requests, and every request after a
//!   release is answered by it.
//! - `inherit.rs`: exactly what a child inherits, in gate and shared mode:
//!   `LISTEN_*`, fds 3.., its own pid, no leaked variables, signals or fds.
//! - `gate.rs`: the traffic gate. Refused builds of four kinds under load cost
//!   no request and show no client the broken build; 20 releases under load
//!   from 8 keep-alive and 8 new-connection clients; IPv6; a full old accept
//!   queue at the flip; Unix sockets; nginx's keep-alive closes and the
//!   quiesce; the diagnostics (last check, an app that binds its own port,
//!   forced drains, a removed Unix path).
//! - `failures.rs`: refused releases (never ready, exits at once, bad paths,
//!   overlapping), forced drains that reap grandchildren, no fd leak.
//! - `faults.rs`: the rows of "What bgd does when…" (docs/guide.md):
//!   restarts, slow requests, flapping, odd paths, unreadable files, disk full
//!   (tmpfs), SIGKILL mid-release, `app.user`, peer checks, control-socket
//!   abuse.
//! - `lifecycle.rs`: status, rollback, restarting bgd, SIGKILL of bgd,
//!   `reexec`, config errors.
//! - `kept.rs`: kept releases: rollback after a failed release, `rollback
//!   --to` a label, `keep`, the app's writes never reaching a kept copy, a
//!   build that does not fit (tmpfs), taking over an older root, a build that
//!   contains the root, the watch pause across a restart.
//! - `builds.rs`: hostile and damaged builds (issue 26): a deploy user's
//!   setuid tools and file capabilities, sparse files, trees 1,900 deep
//!   (copied, watched) and deeper (refused), a build written while it is
//!   copied, a damaged kept copy, a watched path that is a symlink.
//! - `canary.rs`: warm standby, canaries and the bake window, under load from
//!   keep-alive and new-connection clients: not one request fails.
//! - `config_checks.rs`: configs edited by hand (issue 26): a NUL byte in a
//!   value, a reload naming a program that is not there (or not
//!   executable, or a user that does not exist), a health endpoint slower
//!   than 2 s; `--check` and SIGHUP refuse them and the old config stays.
//! - `clients.rs`: traffic by client, under load: a preview reaches the
//!   testers alone (clients bound to addresses of 127.0.0.0/8), a canary by
//!   client keeps each client on one build and moves none back when its
//!   share grows, `bgctl compare` exits 9 on a status that differs, and bad
//!   input (at `--check` too) is refused with the fix.
//! - `contain.rs`: containment, with cgroups and with the process-group
//!   fallback (`BGD_NO_CGROUP`): every process of a color, however it forked,
//!   `setsid()`ed or daemonized, is found, stopped and killed with it.
//! - `escapes.rs`: an app's terminal escapes (title, clear, CR, NUL, C1)
//!   reach no terminal raw: logs, a failure's tail, hook lines, events,
//!   status, history, bgd's own log (issue 26).
//! - `watch.rs`: auto-release under load: slow writers, `rm -rf`, `mv`,
//!   markers, broken builds, no loops, pause, turn-taking.
//! - `readme.rs`: the README's demo (`examples/hello/demo.sh`) runs and
//!   loses no request.
//! - `operations.rs`: hooks, shared data, history, logs, `--no-wait`,
//!   completions and man page.
//! - `own_files.rs`: bgd's own files torn or unwritable (issue 26):
//!   `history.json`, `state.json`, run records and `operator.json` cut short
//!   lose at most their last record, never make bgd kill the serving app,
//!   and are named in status; a full disk fails releases with exit 6.
//! - `metrics.rs`: after two releases, a rollback, a failed release and a
//!   restart of the live color, the Python client's parser reads exact values
//!   from `/metrics` (and `promtool check metrics` lints it where installed),
//!   and `bgctl events -f` saw the same events in order; a scraper that stalls
//!   is cut at its deadline and one that sends garbage is answered, while
//!   releases go on; a bad or busy `metrics.listen` stops bgd at start.
//! - `pause.rs`: a pause for database work under new-connection and
//!   keep-alive clients with 40 s timeouts: the waiting requests are answered
//!   by the release that ends it (0 failed, waits over 5 s), resume, `--max`
//!   with the shipped maintenance page, clients beyond the backlog, a
//!   SIGKILL of bgd during the pause, a failed release, bad input, shared
//!   mode and Unix listeners.
//! - `servers.rs`: real servers from `examples/servers/`, each released 5
//!   times under keep-alive and new-connection load, against the failed
//!   requests recorded in docs/servers.md, whose recipes must show the
//!   examples as they are.
//! - `systemd.rs`: the shipped units under a real `systemd --user` in a
//!   private mount namespace: a notify start, socket activation, a release,
//!   `systemctl restart` under load with zero failed requests (through the
//!   socket unit and through the fd store alone), a reload, a watchdog
//!   restart of a SIGSTOPped bgd, and a pause across `systemctl restart`.
//! - `fleet.rs`: `examples/fleet` over ssh into network namespaces (3 hosts,
//!   each with its own sshd and bgd): batches in order; a build that cannot
//!   start on host 2 leaves host 1 on the new build and hosts 2 and 3 on the
//!   old one (host 3 untouched), and the play fails with bgctl's message and
//!   exit code; a build that fails the HTTP check is rolled back; the same
//!   play again changes nothing, and one changed file is all that is sent; a
//!   10% canary on host 1 (canary, promote, bake), then `--wait-bake` on host
//!   2; a build that turns unhealthy is rolled back by bgd during its bake
//!   (exit 8) and the play stops; `ansible-doc` shows the module.
//! - `deb.rs`: the Debian package: `packaging/deb/build`, its exact file list
//!   (`dpkg-deb -c`), no lintian error, `apt-get install`, `man -l` of both
//!   pages, bash completions that load; the installed bgd, unit and example
//!   config run the installed example app under the user manager (a release
//!   with the installed bgctl, then an auto-release); remove and purge leave
//!   nothing (a purge keeps `/var/lib/bgd` unless the asked question is
//!   answered yes); the maintainer scripts' `systemctl` calls, seen through a
//!   stub.
//! - `harness.rs` and `load.rs`: a real `bgd` in a temp dir driven by the real
//!   `bgctl`, and the HTTP load (keep-alive and new-connection clients, every
//!   response and failure recorded with its start).
//!
//! What some tests need. Some need root (tmpfs mounts, other users, the
//! systemd user manager), and one needs nginx (`apt-get install
//! nginx-light`); without them they print why they skip. The metrics test
//! needs Python's Prometheus client (`apt-get install
//! python3-prometheus-client`), and runs promtool where it is installed. The
//! servers test skips a server that is not installed unless
//! `BGD_REQUIRE_SERVERS=1` (`.ci/servers` installs them). The package test in
//! `deb.rs` needs root, cargo-deb, lintian and man, and a machine without bgd
//! on it (no package, no `/usr/bin/bgd`, `/etc/bgd` or `/var/lib/bgd`): it
//! installs the package for real and purges it at the end, even when it
//! fails. `bash .ci/run` installs what the tests need on a fresh Debian
//! machine (cargo-deb with `cargo install --locked`, about two minutes) and
//! runs them with `BGD_REQUIRE_SYSTEMD=1 BGD_REQUIRE_NGINX=1`, then the fleet
//! test alone with `BGD_REQUIRE_ANSIBLE=1` (root, openssh-server and
//! ansible-core 2.19.14 in a venv under `target/`, which it installs), then
//! the package test alone with `BGD_REQUIRE_DEB=1`, so those tests cannot
//! skip there.

mod harness;
mod load;

mod builds;
mod canary;
mod clients;
mod config_checks;
mod contain;
mod deb;
mod escapes;
mod failures;
mod faults;
mod fleet;
mod gate;
mod inherit;
mod kept;
mod lifecycle;
mod liveness;
mod metrics;
mod operations;
mod own_files;
mod pause;
mod readme;
mod releases;
mod servers;
mod sockets;
mod systemd;
mod watch;
