//! Failed authentications, aggregated (issue 15, "the audit log"): a client guessing keys must
//! not append one entry per request. The first failure of a source in a minute is written at
//! once; the others of that minute are counted and written as one entry with the count when the
//! minute is over (or the source fails again later). The target (the request path) is cut to
//! [`MAX_TARGET`] bytes. At most [`MAX_SOURCES`] sources are tracked at once; beyond, failures
//! count together under no source.

use super::{AuditEvent, AuditOutcome};
use flotilla_core::Timestamp;
use std::collections::HashMap;
use std::net::IpAddr;

/// Longest target written, in bytes.
pub(crate) const MAX_TARGET: usize = 256;
/// Sources tracked at once.
pub(crate) const MAX_SOURCES: usize = 10_000;

/// Failures of one source in its current minute, beyond the first (already written).
#[derive(Debug)]
struct Minute {
    minute: i64,
    more: u64,
    actor: Option<String>,
    target: String,
}

/// The aggregation state; the caller writes the events it returns.
#[derive(Debug, Default)]
pub(crate) struct Failures {
    by_source: HashMap<Option<IpAddr>, Minute>,
}

impl Failures {
    /// Notes one failure; returns what to write now (the first of a minute, and the count of the
    /// source's previous minute when it had more).
    pub(crate) fn note(
        &mut self,
        source: Option<IpAddr>,
        actor: Option<String>,
        target: &str,
        now: Timestamp,
    ) -> Vec<AuditEvent> {
        let minute = now.timestamp().div_euclid(60);
        let source = if self.by_source.len() >= MAX_SOURCES && !self.by_source.contains_key(&source)
        {
            None
        } else {
            source
        };
        let target = truncate(target);
        let mut out = Vec::new();
        match self.by_source.get_mut(&source) {
            Some(current) if current.minute == minute => {
                current.more += 1;
                current.actor = actor;
                current.target = target;
                return out;
            }
            Some(_) => {
                if let Some(previous) = self.by_source.remove(&source) {
                    out.extend(summary(source, previous));
                }
            }
            None => {}
        }
        out.push(event(source, actor.clone(), target.clone()));
        self.by_source.insert(
            source,
            Minute {
                minute,
                more: 0,
                actor,
                target,
            },
        );
        out
    }

    /// The counts of minutes that are over, to write; those sources are forgotten.
    pub(crate) fn due(&mut self, now: Timestamp) -> Vec<AuditEvent> {
        let minute = now.timestamp().div_euclid(60);
        let over: Vec<Option<IpAddr>> = self
            .by_source
            .iter()
            .filter(|(_, m)| m.minute < minute)
            .map(|(s, _)| *s)
            .collect();
        over.into_iter()
            .filter_map(|s| self.by_source.remove(&s).and_then(|m| summary(s, m)))
            .collect()
    }

    /// Sources tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.by_source.len()
    }
}

fn event(source: Option<IpAddr>, actor: Option<String>, target: String) -> AuditEvent {
    AuditEvent {
        action: "auth.failure",
        target,
        outcome: AuditOutcome::Denied,
        actor,
        tenant_id: None,
        source,
    }
}

/// The entry of a minute's further failures, if there were any.
fn summary(source: Option<IpAddr>, minute: Minute) -> Option<AuditEvent> {
    (minute.more > 0).then(|| {
        let start = chrono::DateTime::from_timestamp(minute.minute * 60, 0)
            .map(|t| t.format("%Y-%m-%dT%H:%MZ").to_string())
            .unwrap_or_default();
        event(
            source,
            minute.actor,
            truncate(&format!(
                "{} more in the minute from {start}; last: {}",
                minute.more, minute.target
            )),
        )
    })
}

fn truncate(text: &str) -> String {
    if text.len() <= MAX_TARGET {
        return text.to_owned();
    }
    let mut end = MAX_TARGET - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: i64) -> Timestamp {
        chrono::Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn a_minute_of_failures_makes_two_entries() {
        let mut failures = Failures::default();
        let ip: Option<IpAddr> = Some([10, 0, 0, 1].into());
        // 1_800_000_000 is a whole minute: `at(60)` starts a minute.
        let t = |s: i64| at(60 + s);
        let first = failures.note(ip, None, "/v1/tasks", t(0));
        assert_eq!(first.len(), 1);
        for s in 1..1_000 {
            assert!(failures.note(ip, None, "/v1/x", t(s % 59)).is_empty());
        }
        assert!(failures.due(t(59)).is_empty(), "the minute is not over");
        let due = failures.due(t(60));
        assert_eq!(due.len(), 1);
        assert!(
            due[0].target.starts_with("999 more in the minute"),
            "{}",
            due[0].target
        );
        assert_eq!(failures.tracked(), 0);
    }

    #[test]
    fn targets_are_cut_and_sources_bounded() {
        let mut failures = Failures::default();
        let long = "/v1/".to_owned() + &"é".repeat(40_000);
        let written = failures.note(None, None, &long, at(0));
        assert!(
            written[0].target.len() <= MAX_TARGET,
            "{}",
            written[0].target.len()
        );
        for n in 0..(MAX_SOURCES as u32 * 2) {
            failures.note(Some(std::net::Ipv4Addr::from(n).into()), None, "/", at(0));
        }
        assert!(failures.tracked() <= MAX_SOURCES);
    }
}
