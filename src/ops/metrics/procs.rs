//! The per-color process figures, read from /proc at scrape time:
//! `bgd_color_processes`, `bgd_color_memory_bytes` and
//! `bgd_color_cpu_seconds_total`.
//!
//! A color's processes are those its containment finds (`contain.rs`): its
//! cgroup, whose `memory.current` and `cpu.stat` are used where the
//! controllers are enabled, or else its process group and the processes
//! carrying its `BG_ROOT`/`BG_COLOR`, whose /proc figures are added up.

use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::color::Color;

/// The process group (its leader's pid) each color runs, blue then green;
/// `None` while bgd holds no process for it (stopped, or starting: the
/// release task owns a starting color's process).
#[derive(Debug, Default)]
pub struct ColorGroups {
    groups: Mutex<[Option<i32>; 2]>,
    contain: Mutex<Option<std::sync::Arc<crate::supervise::contain::Containment>>>,
}

impl ColorGroups {
    /// How the colors' processes are found; until set, by process group.
    pub(crate) fn contain_with(&self, c: std::sync::Arc<crate::supervise::contain::Containment>) {
        *self.contain.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
    }

    /// Each color's figures: its members' /proc figures, with the cgroup's
    /// own memory and CPU where it has them.
    fn usage(&self) -> [Usage; 2] {
        let groups = self.get();
        let contain = self
            .contain
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(contain) = contain else {
            return usage(groups);
        };
        let mut out = [Usage::default(); 2];
        for (i, color) in Color::BOTH.into_iter().enumerate() {
            let Some(leader) = groups[i] else { continue };
            let leader = nix::unistd::Pid::from_raw(leader);
            let members: Vec<i32> = contain
                .members(color, leader)
                .iter()
                .map(|p| p.as_raw())
                .collect();
            out[i] = sum_of(&members);
            let cg = contain.usage(color, Some(leader));
            if let Some(m) = cg.memory_bytes {
                out[i].memory_bytes = m as i64;
            }
            if let Some(u) = cg.cpu_usec {
                out[i].cpu_seconds = u as f64 / 1e6;
            }
        }
        out
    }

    pub fn set(&self, groups: [Option<i32>; 2]) {
        *self.groups.lock().unwrap_or_else(|e| e.into_inner()) = groups;
    }

    fn get(&self) -> [Option<i32>; 2] {
        *self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One color's processes added up.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Usage {
    pub processes: i64,
    /// Sum of each process's resident set (pages shared by forked workers
    /// count once per process).
    pub memory_bytes: i64,
    /// User and system time of the processes, plus that of their children
    /// they have reaped.
    pub cpu_seconds: f64,
}

/// Adds up the processes of each group in `groups`, in one pass over /proc.
pub fn usage(groups: [Option<i32>; 2]) -> [Usage; 2] {
    let mut out = [Usage::default(); 2];
    if groups.iter().all(Option::is_none) {
        return out;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let (tick, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
            libc::sysconf(libc::_SC_PAGESIZE).max(1),
        )
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // A process may exit between the listing and the read: skip it.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(s) = parse_stat(&stat) else { continue };
        for (i, g) in groups.iter().enumerate() {
            if *g == Some(s.pgrp) {
                out[i].processes += 1;
                out[i].memory_bytes += s.rss_pages * page;
                out[i].cpu_seconds += s.ticks as f64 / tick;
            }
        }
    }
    out
}

struct Stat {
    pgrp: i32,
    /// utime + stime + cutime + cstime, in clock ticks.
    ticks: u64,
    rss_pages: i64,
}

/// The fields of `/proc/PID/stat` bgd needs (proc(5)); the command name may
/// hold spaces and parentheses, so fields are counted after the last `)`.
fn parse_stat(stat: &str) -> Option<Stat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): field N is f[N - 3].
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<i64>().ok());
    let ticks = (14..=17).map(num).sum::<Option<i64>>()?;
    Some(Stat {
        pgrp: num(5)? as i32,
        ticks: ticks.max(0) as u64,
        rss_pages: num(24)?.max(0),
    })
}

/// The /proc figures of `pids` added up.
fn sum_of(pids: &[i32]) -> Usage {
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let (tick, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
            libc::sysconf(libc::_SC_PAGESIZE).max(1),
        )
    };
    let mut u = Usage::default();
    for pid in pids {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(s) = parse_stat(&stat) else { continue };
        u.processes += 1;
        u.memory_bytes += s.rss_pages * page;
        u.cpu_seconds += s.ticks as f64 / tick;
    }
    u
}

impl Collector for ColorGroups {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let [blue, green] = self.usage();
        family(
            &mut encoder,
            "bgd_color_processes",
            "Processes of the color at scrape time: its cgroup, or else its process group and the processes that carry its BG_ROOT and BG_COLOR (0 while it is stopped or starting)",
            [blue.processes, green.processes].map(ConstGauge::new),
        )?;
        family(
            &mut encoder,
            "bgd_color_memory_bytes",
            "Memory of the color in bytes at scrape time: its cgroup's memory.current where the memory controller is enabled, else the sum of its processes' resident sets from /proc (pages shared between forked workers count once per process)",
            [blue.memory_bytes, green.memory_bytes].map(ConstGauge::new),
        )?;
        family(
            &mut encoder,
            "bgd_color_cpu_seconds",
            "CPU seconds of the color: its cgroup's cpu.stat usage_usec (every process it ever held) where it has one, else user and system time of its current processes and the children they reaped, from /proc; starts again from 0 when the color's processes are replaced (/proc) and counts on across them (cgroup)",
            [blue.cpu_seconds, green.cpu_seconds].map(ConstCounter::new),
        )
    }
}

/// One metric with a `color` label: blue's value, then green's.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: [M; 2],
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, values[0].metric_type())?;
    for (color, v) in Color::BOTH.iter().zip(values) {
        v.encode(m.encode_family(&[("color", color.as_str())])?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "42 (a) b (c)) S 1 40 40 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0 100 1000000 250 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.pgrp, 40);
        assert_eq!(s.ticks, 13);
        assert_eq!(s.rss_pages, 250);
    }

    #[test]
    fn our_own_group_is_found() {
        let pgrp = nix::unistd::getpgrp().as_raw();
        let [u, none] = usage([Some(pgrp), None]);
        assert!(u.processes >= 1 && u.memory_bytes > 0, "{u:?}");
        assert_eq!(none, Usage::default());
    }
}
