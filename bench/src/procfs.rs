//! CPU time and memory of server processes, from `/proc`.
//!
//! CPU seconds are `utime + stime` of `/proc/PID/stat` (every thread of the process, in clock
//! ticks), resident memory is `VmRSS` of `/proc/PID/status`.

use serde::{Deserialize, Serialize};
use std::io;
use std::sync::OnceLock;

/// One reading of a set of processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcSample {
    /// User + system CPU seconds consumed so far, summed over the processes.
    pub cpu_secs: f64,
    /// Resident memory in bytes, summed over the processes.
    pub rss_bytes: u64,
}

impl ProcSample {
    /// CPU seconds consumed between `earlier` and `self`.
    pub fn cpu_since(&self, earlier: &ProcSample) -> f64 {
        (self.cpu_secs - earlier.cpu_secs).max(0.0)
    }
}

fn ticks_per_sec() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
            Ok(Some(ticks)) if ticks > 0 => ticks as f64,
            // Linux's USER_HZ is 100 on every mainstream architecture.
            _ => 100.0,
        }
    })
}

fn bad(pid: u32, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("/proc/{pid}: cannot parse {what}"),
    )
}

/// CPU seconds (`utime + stime`) of process `pid`.
pub fn cpu_secs(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_cpu(&stat)
        .map(|ticks| ticks as f64 / ticks_per_sec())
        .ok_or_else(|| bad(pid, "stat"))
}

/// `utime + stime` in ticks from the text of `/proc/PID/stat`.
fn parse_stat_cpu(stat: &str) -> Option<u64> {
    // The command name (field 2) is parenthesised and may contain spaces: fields are counted
    // from the last `)`. After it come field 3 (state) … field 14 (utime), 15 (stime).
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after.split_ascii_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_kib(&status, "VmRSS:")
        .map(|kib| kib * 1024)
        .ok_or_else(|| bad(pid, "status"))
}

fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU seconds and resident memory of every process in `pids`, summed.
pub fn sample(pids: &[u32]) -> io::Result<ProcSample> {
    let mut total = ProcSample::default();
    for &pid in pids {
        total.cpu_secs += cpu_secs(pid)?;
        total.rss_bytes += rss_bytes(pid)?;
    }
    Ok(total)
}

/// This process's id.
pub fn own_pid() -> u32 {
    std::process::id()
}

/// Number of open file descriptors of this process.
pub fn own_open_fds() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let stat = "1234 (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_cpu(stat), Some(300));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let sample = sample(&[own_pid()]).expect("own /proc entry");
        assert!(sample.rss_bytes > 0);
        assert!(sample.cpu_secs >= 0.0);
        assert!(parse_status_kib("Name: x\nVmRSS:\t  2048 kB\n", "VmRSS:") == Some(2048));
    }
}
