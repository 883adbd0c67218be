//! The control-plane process's own resources: CPU time, resident memory, its memory limit, file
//! descriptors, and the space of the data directory's file system. Read on demand (at each
//! scrape and each `GET /v1/system`) from `getrusage`, `/proc/self` and `statvfs`; on a system
//! without `/proc` the values that need it are absent, never guessed.
//!
//! Exported at `/metrics` under the standard Prometheus process-collector names
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_start_time_seconds`), which existing dashboards know.

use flotilla_core::wire::{DiskInfo, ProcessInfo};
use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The family names this collector exports (a counter's without `_total`).
pub(crate) const NAMES: [&str; 5] = [
    "process_cpu_seconds",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
];

static STARTED: OnceLock<SystemTime> = OnceLock::new();

/// Notes the start of the process; the first call wins. `Metrics::new`, early in `start`,
/// calls it, so the recorded time is within moments of the process's start.
pub(crate) fn mark_start() -> SystemTime {
    *STARTED.get_or_init(SystemTime::now)
}

/// Reads what can be read now.
pub(crate) fn sample() -> ProcessInfo {
    ProcessInfo {
        cpu_seconds: cpu_seconds(),
        cpus: std::thread::available_parallelism()
            .ok()
            .and_then(|n| u32::try_from(n.get()).ok()),
        resident_memory_bytes: resident_memory_bytes(),
        memory_limit_bytes: memory_limit_bytes(),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as u64),
        max_fds: getrlimit(Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _)| soft),
    }
}

/// Space of the file system that holds `path`.
#[allow(
    clippy::useless_conversion,
    reason = "statvfs' field types are u64 on 64-bit Linux, narrower elsewhere"
)]
pub(crate) fn disk(path: &Path) -> Option<DiskInfo> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    let unit = u64::from(stat.fragment_size());
    Some(DiskInfo {
        available_bytes: u64::from(stat.blocks_available()).saturating_mul(unit),
        total_bytes: u64::from(stat.blocks()).saturating_mul(unit),
    })
}

fn cpu_seconds() -> Option<f64> {
    let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(seconds(usage.user_time()) + seconds(usage.system_time()))
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&status, "VmRSS:")
}

fn kib_field(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line[field.len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib.saturating_mul(1024))
}

/// The lower of the cgroup (v2) memory limit, when one is set, and the machine's memory.
fn memory_limit_bytes() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| kib_field(&m, "MemTotal:"));
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("0::"))
                .map(str::to_owned)
        })
        .and_then(|dir| {
            std::fs::read_to_string(format!(
                "/sys/fs/cgroup{}/memory.max",
                dir.trim_end_matches('/')
            ))
            .ok()
        })
        .and_then(|max| max.trim().parse::<u64>().ok());
    match (total, cgroup) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}

/// Encodes the process metrics at each scrape.
#[derive(Debug, Default)]
pub(crate) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let info = sample();
        if let Some(cpu) = info.cpu_seconds {
            let counter = ConstCounter::new(cpu);
            let metric = encoder.encode_descriptor(
                NAMES[0],
                "Total user and system CPU time spent in seconds",
                None,
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        let gauges = [
            (
                NAMES[1],
                "Resident memory size in bytes",
                info.resident_memory_bytes,
            ),
            (NAMES[2], "Number of open file descriptors", info.open_fds),
            (
                NAMES[3],
                "Maximum number of open file descriptors",
                info.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
                let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
                gauge.encode(metric)?;
            }
        }
        if let Ok(since_epoch) = mark_start().duration_since(UNIX_EPOCH) {
            let gauge = ConstGauge::new(since_epoch.as_secs_f64());
            let metric = encoder.encode_descriptor(
                NAMES[4],
                "Start time of the process since unix epoch in seconds",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_reads_its_own_resources() {
        let info = sample();
        assert!(info.cpu_seconds.is_some_and(|s| s >= 0.0));
        assert!(info.cpus.is_some_and(|n| n > 0));
        if Path::new("/proc/self/status").exists() {
            assert!(info.resident_memory_bytes.is_some_and(|b| b > 0));
            assert!(info.memory_limit_bytes.is_some_and(|b| b > 0));
            assert!(info.open_fds.is_some_and(|n| n > 0));
        }
        let disk = disk(Path::new("/")).unwrap_or(DiskInfo {
            available_bytes: 0,
            total_bytes: 0,
        });
        assert!(disk.total_bytes >= disk.available_bytes && disk.total_bytes > 0);
    }

    #[test]
    fn kib_fields_are_read_as_bytes() {
        let text = "Name:\tx\nVmRSS:\t  1234 kB\n";
        assert_eq!(kib_field(text, "VmRSS:"), Some(1234 * 1024));
        assert_eq!(kib_field(text, "VmHWM:"), None);
    }
}
