//! What the generator reads from the operating system: the server's CPU time, memory and
//! disk writes from /proc, its own CPU from getrusage, and the open-files limit it raises.

use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
use serde::Serialize;

/// CPU time, memory and disk writes of a process at one instant.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct ProcSample {
    /// user + system CPU seconds since the process started (all threads).
    pub(crate) cpu_s: f64,
    pub(crate) rss_kib: u64,
    /// Peak RSS.
    pub(crate) hwm_kib: u64,
    /// Bytes the process caused to be written to storage (`write_bytes` of
    /// /proc/<pid>/io: journal, WAL and checkpoint pages alike); none where unreadable
    /// (another user's process).
    pub(crate) written_bytes: Option<u64>,
}

fn clock_ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as f64,
        _ => 100.0,
    }
}

/// Reads /proc/<pid>/stat (utime + stime), /proc/<pid>/status (VmRSS, VmHWM) and
/// /proc/<pid>/io (write_bytes).
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
    Some(ProcSample {
        cpu_s: (utime + stime) as f64 / clock_ticks(),
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
        written_bytes: written_bytes(pid),
    })
}

fn written_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines().find_map(|line| line.strip_prefix("write_bytes:")).and_then(|value| value.trim().parse().ok())
}

/// CPU seconds of each thread of `pid` by thread id, with the thread's name.
pub(crate) fn threads(pid: u32) -> std::collections::HashMap<u32, (String, f64)> {
    let mut out = std::collections::HashMap::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    let ticks = clock_ticks();
    for entry in entries.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let cpu = fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
            + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        out.insert(tid, (name, cpu as f64 / ticks));
    }
    out
}

/// CPU seconds spent by each thread name of `pid` between two `threads` snapshots.
pub(crate) fn thread_cpu_delta(
    before: &std::collections::HashMap<u32, (String, f64)>,
    after: &std::collections::HashMap<u32, (String, f64)>,
) -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    for (tid, (name, cpu)) in after {
        let earlier = before.get(tid).map_or(0.0, |(_, cpu)| *cpu);
        let spent = cpu - earlier;
        if spent > 0.0 {
            *by_name.entry(name.clone()).or_insert(0.0) += spent;
        }
    }
    for value in by_name.values_mut() {
        *value = (*value * 1000.0).round() / 1000.0;
    }
    by_name
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
    let mut sample = sample(std::process::id())
        .unwrap_or(ProcSample { cpu_s: 0.0, rss_kib: 0, hwm_kib: 0, written_bytes: None });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_memory_and_disk_writes_of_a_process_from_proc() {
        // Burn a little CPU so that the sample has something to show.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let own = sample(std::process::id()).expect("our own /proc entry");
        assert!(own.rss_kib > 0 && own.hwm_kib >= own.rss_kib);
        assert!(own.cpu_s >= 0.0 && self_cpu_s() > 0.0);
        assert!(sample(u32::MAX).is_none(), "no such process");

        // 1 MiB written and synced, so that it reaches storage rather than the page cache
        // only; beside the test binary, as the temporary directory may be a tmpfs, whose
        // writes never reach storage.
        let beside_binary = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
        let dir = beside_binary.join(format!("esh-load-sys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let before = written_bytes(std::process::id()).expect("our own /proc/<pid>/io");
        let file = std::fs::File::create(dir.join("written")).unwrap();
        std::io::Write::write_all(&mut &file, &vec![1u8; 1 << 20]).unwrap();
        file.sync_all().unwrap();
        let after = sample(std::process::id()).unwrap().written_bytes.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(after >= before + (1 << 20), "{before} then {after} bytes written");
    }
}
