//! The standard `process_*` metrics (memory, CPU, file descriptors, start time), read from
//! `/proc/self` at scrape time and rendered as exposition text.
//!
//! Hand-rendered rather than kept in the recorder: CPU seconds are fractional, and a
//! `metrics` counter holds integers. On systems without `/proc` the block is empty.

use std::fmt::Write;

/// `/proc` reports CPU times in USER_HZ ticks, which Linux fixes at 100 per second for user
/// space whatever the kernel's own tick rate.
const TICKS_PER_SECOND: f64 = 100.0;

/// What `/proc/self` says now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    /// Resident set size, bytes.
    pub resident_memory_bytes: Option<u64>,
    /// User plus system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
    /// Start time, unix seconds.
    pub start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads the current process's figures; whatever cannot be read is left out.
    pub fn read() -> ProcessStats {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        let boot = std::fs::read_to_string("/proc/stat").ok();
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64);
        let mut s = parse(
            stat.as_deref(),
            status.as_deref(),
            limits.as_deref(),
            boot.as_deref(),
        );
        s.open_fds = open_fds;
        s
    }

    /// Appends the exposition text of the figures known.
    pub fn render(&self, out: &mut String) {
        let mut metric = |name: &str, kind: &str, help: &str, value: Option<String>| {
            if let Some(v) = value {
                // Writing to a String cannot fail.
                let _ = write!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n\n"
                );
            }
        };
        metric(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            self.cpu_seconds.map(|v| format!("{v}")),
        );
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            self.resident_memory_bytes.map(|v| v.to_string()),
        );
        metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            self.open_fds.map(|v| v.to_string()),
        );
        metric(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            self.max_fds.map(|v| v.to_string()),
        );
        metric(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            self.start_time_seconds.map(|v| format!("{v}")),
        );
    }
}

/// Parses the text of `/proc/self/stat`, `/proc/self/status`, `/proc/self/limits` and
/// `/proc/stat`.
fn parse(
    stat: Option<&str>,
    status: Option<&str>,
    limits: Option<&str>,
    boot: Option<&str>,
) -> ProcessStats {
    // The command name (field 2) is in parentheses and may hold spaces: fields are counted
    // from the last `)`. After it, index 0 is field 3 (state); utime is field 14, stime 15,
    // starttime 22.
    let fields: Vec<&str> = stat
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let cpu_seconds = match (field(14), field(15)) {
        (Some(u), Some(s)) => Some((u + s) as f64 / TICKS_PER_SECOND),
        _ => None,
    };
    let boot_time = boot.and_then(|b| {
        b.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    let start_time_seconds = match (boot_time, field(22)) {
        (Some(b), Some(ticks)) => Some(b as f64 + ticks as f64 / TICKS_PER_SECOND),
        _ => None,
    };
    let resident_memory_bytes = status.and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let max_fds = limits.and_then(|l| {
        l.lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    });
    ProcessStats {
        resident_memory_bytes,
        cpu_seconds,
        open_fds: None,
        max_fds,
        start_time_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_text() {
        let stat = "8189 (my (odd) cmd) R 8146 8146 27449 0 -1 4194304 98 0 0 0 250 50 0 0 20 0 1 0 525745 3133440 360 0";
        let status = "Name:\tx\nVmRSS:\t    2176 kB\nThreads:\t1\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            20000                20000                files\n";
        let boot = "cpu  1 2 3\nbtime 1795682524\n";
        let s = parse(Some(stat), Some(status), Some(limits), Some(boot));
        assert_eq!(s.cpu_seconds, Some(3.0));
        assert_eq!(s.resident_memory_bytes, Some(2176 * 1024));
        assert_eq!(s.max_fds, Some(20000));
        assert_eq!(s.start_time_seconds, Some(1_795_682_524.0 + 5257.45));
        let mut out = String::new();
        s.render(&mut out);
        assert!(
            out.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3\n")
        );
        assert!(
            !out.contains("process_open_fds"),
            "unknown figures are left out"
        );
    }

    #[test]
    fn reads_this_process() {
        let s = ProcessStats::read();
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(s.resident_memory_bytes.unwrap_or(0) > 0);
            assert!(s.open_fds.unwrap_or(0) > 0);
            assert!(s.start_time_seconds.unwrap_or(0.0) > 1.0e9);
        }
    }
}
