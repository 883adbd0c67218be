//! The server's modules and what they import (`crate::<module>` outside comments and tests),
//! checked against the layers ARCHITECTURE.md draws:
//!
//! - the runtime layer (`clock`, `leadership`, `audit`, `vault`, `tls`, `leader`, `cluster`,
//!   `waiters`, `telemetry`, `agent_clients`) imports no service, no HTTP layer and not the composition root;
//! - the services (`fleet`, `auth`, `scheduler`, `gateway`, `alerts`) import neither the HTTP
//!   layer (`api`), nor the composition root (`app`), nor what a replica does with the cluster's
//!   notices (`replicas`): each is built from the narrow handles it needs;
//! - the graph has no cycle at all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules below every service: they may import only each other.
const RUNTIME: &[&str] = &[
    "clock",
    "leadership",
    "audit",
    "vault",
    "tls",
    "leader",
    "cluster",
    "waiters",
    "telemetry",
    "agent_clients",
    "notify",
    "outbound",
];

/// The services, between the runtime layer and the HTTP layer.
const SERVICES: &[&str] = &["fleet", "auth", "scheduler", "gateway", "alerts"];

/// What sits above the services: the HTTP layer, the composition root and the cluster fan-out.
const ABOVE_SERVICES: &[&str] = &["api", "app", "replicas", "lib"];

/// What the runtime layer may import besides itself (module paths, or their prefixes): the
/// event sink.
const RUNTIME_ALSO_IMPORTS: &[&str] = &["fleet::events"];

/// `module -> modules it imports`, over `src/`: top-level modules.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    paths()
        .into_iter()
        .map(|(module, imports)| {
            let tops = imports
                .iter()
                .map(|path| path.split("::").next().unwrap_or_default().to_owned())
                .filter(|top| *top != module)
                .collect();
            (module, tops)
        })
        .collect()
}

/// `module -> module paths it imports` (e.g. `fleet::events::EventSink` as `fleet::events`).
fn paths() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        if relative.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let first = relative.components().next().unwrap();
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        // Unit tests at the end of a file may import what they like.
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        let imports = graph.entry(module.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or_default();
            for (at, _) in code.match_indices("crate::") {
                let path: String = code[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_' || *c == ':')
                    .collect();
                let path = path.trim_end_matches(':');
                if !path.is_empty() && path.split("::").next() != Some(module.as_str()) {
                    imports.insert(path.to_owned());
                }
            }
        }
    }
    graph
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The modules `from` reaches through imports.
fn reach(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_owned()];
    while let Some(module) = stack.pop() {
        for next in graph.get(&module).into_iter().flatten() {
            if seen.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    seen
}

#[test]
fn the_runtime_layer_imports_no_service() {
    let paths = paths();
    let mut wrong = Vec::new();
    for module in RUNTIME {
        for import in paths.get(*module).into_iter().flatten() {
            let allowed = RUNTIME
                .iter()
                .chain(RUNTIME_ALSO_IMPORTS)
                .any(|a| import == a || import.starts_with(&format!("{a}::")));
            if !allowed {
                wrong.push(format!("{module} imports {import}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn services_import_nothing_above_them() {
    let graph = graph();
    let mut wrong = Vec::new();
    for module in SERVICES {
        for import in graph.get(*module).into_iter().flatten() {
            if ABOVE_SERVICES.contains(&import.as_str()) {
                wrong.push(format!("{module} imports {import}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = graph();
    // A module is on a cycle when it reaches itself.
    let cyclic: Vec<&String> = graph
        .keys()
        .filter(|m| reach(&graph, m).contains(*m))
        .collect();
    assert!(
        cyclic.is_empty(),
        "modules on an import cycle: {cyclic:?}\nthe graph: {graph:#?}"
    );
}
