//! The permission table in docs/security.md must be the one the code enforces.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use flotilla_core::auth::{Permission, Role};

#[test]
fn the_documented_permission_table_is_the_enforced_one() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/security.md"
    ))
    .unwrap();
    let start = doc.find("<!-- permission-table:start -->").unwrap();
    let end = doc.find("<!-- permission-table:end -->").unwrap();
    let rows: Vec<Vec<String>> = doc[start..end]
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect();
    let header: Vec<&str> = rows[0][1..].iter().map(String::as_str).collect();
    let roles: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(header, roles);
    let documented: Vec<&str> = rows[1..].iter().map(|r| r[0].as_str()).collect();
    let permissions: Vec<&str> = Permission::ALL.iter().map(|p| p.as_str()).collect();
    assert_eq!(documented, permissions, "one row per permission, in order");
    for (row, permission) in rows[1..].iter().zip(Permission::ALL) {
        for (cell, role) in row[1..].iter().zip(Role::ALL) {
            assert_eq!(
                cell == "✓",
                role.allows(permission),
                "docs/security.md says {role} {} {permission}",
                if cell == "✓" { "may" } else { "may not" }
            );
        }
    }
}
