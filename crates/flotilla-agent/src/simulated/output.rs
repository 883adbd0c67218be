//! Plausible, clearly labelled output of simulated work, derived only from the task id and
//! input: the same task always gets the same output.

use flotilla_core::id::TaskId;
use serde_json::{Value, json};

/// Says in every output that nothing real happened.
const NOTE: &str = "Simulated output: no real work was done and no model was called.";

const LANGUAGES: [&str; 6] = ["rust", "python", "typescript", "go", "java", "sql"];
const SEVERITIES: [&str; 4] = ["critical", "high", "medium", "low"];
const FINDINGS: [(&str, &str); 6] = [
    ("SQL built by string concatenation", "src/db/query.rs"),
    (
        "Secret committed in a configuration file",
        "config/settings.toml",
    ),
    ("Outdated dependency with a known CVE", "Cargo.lock"),
    (
        "Missing authorisation check on an admin route",
        "src/api/admin.rs",
    ),
    ("Unbounded request body accepted", "src/api/upload.rs"),
    ("Weak hash used for passwords", "src/auth/password.rs"),
];

/// The output of a simulated task of `agent_type`.
pub(super) fn for_task(agent_type: &str, task_id: TaskId, input: &Value) -> Value {
    let mut rng = SplitMix64::new(seed(task_id, input));
    match agent_type {
        "code_generator" => code_generator(&mut rng, input),
        "security_scanner" => security_scanner(&mut rng, input),
        "performance_tester" => performance_tester(&mut rng, input),
        other => json!({
            "simulated": true,
            "note": NOTE,
            "agent_type": other,
            "echo": input,
            "summary": format!("Echoed the input of a `{other}` task (simulated)."),
        }),
    }
}

fn code_generator(rng: &mut SplitMix64, input: &Value) -> Value {
    let language = text(input, "language").unwrap_or_else(|| (*rng.pick(&LANGUAGES)).to_owned());
    let lines = 20 + rng.below(380);
    let files = 1 + rng.below(5);
    let subject = text(input, "prompt")
        .or_else(|| text(input, "description"))
        .map(|s| clip(&s, 80))
        .unwrap_or_else(|| "the requested change".to_owned());
    json!({
        "simulated": true,
        "note": NOTE,
        "language": language,
        "lines_generated": lines,
        "files_changed": files,
        "tests_added": rng.below(8),
        "summary": format!("Generated {lines} lines of {language} across {files} file(s) for {subject} (simulated)."),
    })
}

fn security_scanner(rng: &mut SplitMix64, input: &Value) -> Value {
    let target = text(input, "target")
        .or_else(|| text(input, "repository"))
        .unwrap_or_else(|| "the submitted target".to_owned());
    let count = rng.below(5);
    let findings: Vec<Value> = (0..count)
        .map(|i| {
            let (title, location) = *rng.pick(&FINDINGS);
            json!({
                "id": format!("SIM-{:03}", i + 1),
                "severity": rng.pick(&SEVERITIES),
                "title": title,
                "location": format!("{location}:{}", 1 + rng.below(400)),
            })
        })
        .collect();
    let summary = if findings.is_empty() {
        format!("Scanned {target}: no findings (simulated).")
    } else {
        format!("Scanned {target}: {count} finding(s) (simulated).")
    };
    json!({
        "simulated": true,
        "note": NOTE,
        "target": target,
        "files_scanned": 10 + rng.below(990),
        "findings": findings,
        "summary": summary,
    })
}

fn performance_tester(rng: &mut SplitMix64, input: &Value) -> Value {
    let target = text(input, "url")
        .or_else(|| text(input, "target"))
        .unwrap_or_else(|| "the submitted endpoint".to_owned());
    let requests = input
        .get("requests")
        .and_then(Value::as_u64)
        .unwrap_or(1_000 + rng.below(9_000));
    let p50 = 5 + rng.below(195);
    let p95 = p50 + 10 + rng.below(4 * p50);
    let p99 = p95 + 5 + rng.below(2 * p95);
    let errors = rng.below(requests / 50 + 1);
    json!({
        "simulated": true,
        "note": NOTE,
        "target": target,
        "requests": requests,
        "errors": errors,
        "latency_ms": { "p50": p50, "p95": p95, "p99": p99 },
        "throughput_rps": 50 + rng.below(1_950),
        "summary": format!("{requests} requests against {target}: p50 {p50} ms, p95 {p95} ms (simulated)."),
    })
}

fn text(input: &Value, key: &str) -> Option<String> {
    input.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn clip(s: &str, chars: usize) -> String {
    match s.char_indices().nth(chars) {
        Some((cut, _)) => format!("\"{}…\"", &s[..cut]),
        None => format!("\"{s}\""),
    }
}

/// FNV-1a over the task id and the input's JSON text.
fn seed(task_id: TaskId, input: &Value) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let text = input.to_string();
    for byte in task_id.as_uuid().as_bytes().iter().chain(text.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A tiny deterministic generator (SplitMix64): enough to vary simulated figures.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        // Callers pass non-empty constant tables; index 0 is the fallback of an empty one.
        let len = u64::try_from(items.len()).unwrap_or(u64::MAX);
        let i = usize::try_from(self.below(len)).unwrap_or(0);
        &items[i.min(items.len().saturating_sub(1))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn id(n: u128) -> TaskId {
        TaskId::from_uuid(Uuid::from_u128(n))
    }

    #[test]
    fn every_type_is_labelled_simulated() {
        for agent_type in [
            "code_generator",
            "security_scanner",
            "performance_tester",
            "translator",
        ] {
            let output = for_task(agent_type, id(1), &json!({"prompt": "x"}));
            assert_eq!(output["simulated"], json!(true), "{agent_type}");
            assert!(
                output["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("Simulated"))
            );
            assert!(
                output["summary"]
                    .as_str()
                    .is_some_and(|s| s.contains("(simulated)"))
            );
        }
    }

    #[test]
    fn output_is_deterministic_per_task() {
        let input = json!({"target": "repo"});
        assert_eq!(
            for_task("security_scanner", id(7), &input),
            for_task("security_scanner", id(7), &input)
        );
        let differs = (0..20).any(|n| {
            for_task("code_generator", id(n), &input) != for_task("code_generator", id(7), &input)
        });
        assert!(differs, "different tasks give different output");
    }

    #[test]
    fn type_specific_shapes() {
        let code = for_task("code_generator", id(3), &json!({"language": "rust"}));
        assert_eq!(code["language"], "rust");
        assert!(code["lines_generated"].as_u64().is_some_and(|n| n >= 20));

        let perf = for_task("performance_tester", id(3), &json!({"requests": 500}));
        assert_eq!(perf["requests"], 500);
        let p50 = perf["latency_ms"]["p50"].as_u64().unwrap_or(0);
        let p95 = perf["latency_ms"]["p95"].as_u64().unwrap_or(0);
        assert!(p50 > 0 && p95 > p50);

        let scan = for_task("security_scanner", id(3), &json!({}));
        for finding in scan["findings"].as_array().into_iter().flatten() {
            assert!(SEVERITIES.contains(&finding["severity"].as_str().unwrap_or("")));
        }

        let echo = for_task("translator", id(3), &json!({"text": "hola"}));
        assert_eq!(echo["echo"]["text"], "hola");
    }
}
