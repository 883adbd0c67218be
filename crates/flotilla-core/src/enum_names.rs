//! Test support for the string enums: their names are stored in the database and shown in the
//! API, so each enum's tests pin every name with [`assert_names`].

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use strum::IntoEnumIterator;

/// Asserts that `table` lists every variant of `E` once, in declaration order, with its exact
/// name; that `as_str` gives that name and `parse` reads it back; that serde writes and reads the
/// same name; and that `parse` refuses a name that is not one.
pub(crate) fn assert_names<E>(
    table: &[(E, &str)],
    as_str: impl Fn(E) -> &'static str,
    parse: impl Fn(&str) -> Option<E>,
) where
    E: Copy + PartialEq + Debug + Serialize + DeserializeOwned + IntoEnumIterator,
{
    let listed: Vec<E> = table.iter().map(|&(variant, _)| variant).collect();
    let declared: Vec<E> = E::iter().collect();
    assert_eq!(listed, declared, "the table lists every variant in order");
    for &(variant, name) in table {
        assert_eq!(as_str(variant), name, "as_str of {variant:?}");
        assert_eq!(parse(name), Some(variant), "parse of `{name}`");
        let json = serde_json::to_value(variant).ok();
        assert_eq!(
            json,
            Some(serde_json::Value::from(name)),
            "serde of {variant:?}"
        );
        let back: Option<E> = serde_json::from_value(serde_json::Value::from(name)).ok();
        assert_eq!(back, Some(variant), "serde of `{name}`");
    }
    assert_eq!(parse("no_such_name"), None);
    assert_eq!(parse(""), None);
}

/// Reads a name as serde does, for enums that have no `FromStr`.
pub(crate) fn parse_with_serde<E: DeserializeOwned>(name: &str) -> Option<E> {
    serde_json::from_value(serde_json::Value::from(name)).ok()
}
