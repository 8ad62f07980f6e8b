//! What the generator reads from the operating system: the server's CPU time and memory
//! from /proc, its own CPU from getrusage, and the open-files limit it raises.

use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
use serde::Serialize;

/// CPU time and memory of a process at one instant.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct ProcSample {
    /// user + system CPU seconds since the process started (all threads).
    pub(crate) cpu_s: f64,
    pub(crate) rss_kib: u64,
    /// Peak RSS.
    pub(crate) hwm_kib: u64,
}

fn clock_ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as f64,
        _ => 100.0,
    }
}

/// Reads /proc/<pid>/stat (utime + stime) and /proc/<pid>/status (VmRSS, VmHWM).
pub(crate) fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself contain spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `after` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|line| line.starts_with(key))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(ProcSample { cpu_s: (utime + stime) as f64 / clock_ticks(), rss_kib: kib("VmRSS:"), hwm_kib: kib("VmHWM:") })
}

/// The generator's own CPU seconds (user + system), from getrusage.
pub(crate) fn self_cpu_s() -> f64 {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            tv(usage.user_time()) + tv(usage.system_time())
        }
        Err(_) => 0.0,
    }
}

/// The generator's own sample (CPU from getrusage, memory from /proc/self).
pub(crate) fn self_sample() -> ProcSample {
    let mut sample = sample(std::process::id()).unwrap_or(ProcSample { cpu_s: 0.0, rss_kib: 0, hwm_kib: 0 });
    sample.cpu_s = self_cpu_s();
    sample
}

/// Raises RLIMIT_NOFILE towards `want` (the hard limit too when allowed, e.g. as root);
/// returns the soft limit in force.
pub(crate) fn raise_nofile(want: u64) -> u64 {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 0 };
    if soft >= want {
        return soft;
    }
    if hard < want && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return want;
    }
    let target = want.min(hard);
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => target,
        Err(_) => soft,
    }
}
