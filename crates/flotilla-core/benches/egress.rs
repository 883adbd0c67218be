//! Cost of the egress decision per dispatch: `egress::check` of one address (allowed, refused by
//! a built-in rule, refused by a `deny` entry, a tenant's override), `egress::allowed` over a
//! resolution of four addresses, and `agent_url::endpoint` (the `/execute` URL of an instance).
//! Run: `cargo bench -p flotilla-core --bench egress`. Prints the median and p99 of the time per
//! call over many timed batches, so figures on a shared machine stay comparable in one run.

use flotilla_core::agent_url;
use flotilla_core::egress::{self, EgressPolicy, Requester};
use flotilla_core::id::TenantId;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

const BATCH: usize = 20_000;
const BATCHES: usize = 200;

/// Median and p99 in nanoseconds per call of `f` over `BATCHES` batches of `BATCH` calls.
fn measure(mut f: impl FnMut()) -> (f64, f64) {
    let mut per_call: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..BATCH {
                f();
            }
            started.elapsed().as_nanos() as f64 / BATCH as f64
        })
        .collect();
    per_call.sort_by(f64::total_cmp);
    let at = |q: f64| per_call[((per_call.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

fn main() {
    let tenant = TenantId(uuid::Uuid::from_u128(7));
    // A policy of realistic size: a few allow and deny ranges, a few tenant overrides.
    let nets = |texts: &[&str]| texts.iter().filter_map(|t| t.parse().ok()).collect();
    let policy = EgressPolicy {
        allow: nets(&["10.0.0.0/8", "169.254.170.2/32", "fd00:1::/32"]),
        deny: nets(&[
            "10.66.0.0/16",
            "192.168.0.0/16",
            "172.16.0.0/12",
            "fc00:bad::/32",
        ]),
        allow_loopback_for_tenants: false,
        tenants: (0..8u128)
            .map(|n| {
                (
                    TenantId(uuid::Uuid::from_u128(n)),
                    nets(&["127.0.0.1/32", "100.64.0.0/10"]),
                )
            })
            .collect::<BTreeMap<_, _>>(),
    };
    println!("{:<44} {:>12} {:>12}", "case", "median ns", "p99 ns");
    let cases: [(&str, Option<TenantId>, IpAddr); 6] = [
        ("check: allowed (platform, 10.1.2.3)", None, ip("10.1.2.3")),
        (
            "check: allowed (tenant, 2001:db8::1)",
            Some(tenant),
            ip("2001:db8::1"),
        ),
        (
            "check: metadata (169.254.169.254)",
            None,
            ip("169.254.169.254"),
        ),
        ("check: deny entry (192.168.1.1)", None, ip("192.168.1.1")),
        (
            "check: loopback, tenant override",
            Some(TenantId(uuid::Uuid::from_u128(3))),
            ip("127.0.0.1"),
        ),
        (
            "check: mapped ::ffff:10.1.2.3",
            Some(tenant),
            ip("::ffff:10.1.2.3"),
        ),
    ];
    for (name, owner, address) in cases {
        let (median, p99) = measure(|| {
            let _ = black_box(egress::check(
                black_box(&policy),
                black_box(owner),
                black_box(address),
            ));
        });
        println!("{name:<44} {median:>12.1} {p99:>12.1}");
    }
    let resolved = [
        SocketAddr::new(ip("10.1.2.3"), 0),
        SocketAddr::new(ip("10.1.2.4"), 0),
        SocketAddr::new(ip("2001:db8::1"), 0),
        SocketAddr::new(ip("169.254.169.254"), 0),
    ];
    let (median, p99) = measure(|| {
        let _ = black_box(egress::allowed(
            black_box(&policy),
            Requester::Tenant { allow: &[] },
            black_box(resolved),
        ));
    });
    println!(
        "{:<44} {median:>12.1} {p99:>12.1}",
        "allowed: 4 resolved addresses"
    );
    if let Ok(base) = agent_url::parse("http://agent-17.pool.svc:8080/agents/a") {
        let (median, p99) = measure(|| {
            let _ = black_box(agent_url::endpoint(black_box(&base), "execute"));
        });
        println!(
            "{:<44} {median:>12.1} {p99:>12.1}",
            "endpoint: base URL + /execute"
        );
    }
    let (median, p99) = measure(|| {
        let _ = black_box(reqwest_free_parse(black_box(
            "http://agent-17.pool.svc:8080/agents/a",
        )));
    });
    println!(
        "{:<44} {median:>12.1} {p99:>12.1}",
        "parse stored URL + endpoint"
    );
}

/// What a dispatch does with the stored URL: parse, then join `/execute`.
fn reqwest_free_parse(text: &str) -> Option<url::Url> {
    url::Url::parse(text)
        .ok()
        .and_then(|base| agent_url::endpoint(&base, "execute"))
}
