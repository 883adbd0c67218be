//! Output of client commands. Every listing or report takes `--output table|json` (human tables
//! by default, JSON for programs); listings that have a CSV form take `--output table|json|csv`
//! ([`OutputWithCsv`]). Other commands refuse `--output csv` with clap's "invalid value" error,
//! which names the values they accept.

use clap::ValueEnum;
use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

/// `--output` of a command without a CSV form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table for people.
    #[default]
    Table,
    /// JSON for programs.
    Json,
}

/// `--output` of a listing that also has a CSV form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputWithCsv {
    /// A table for people.
    #[default]
    Table,
    /// JSON for programs.
    Json,
    /// CSV with a header row, for spreadsheets.
    Csv,
}

/// A table with a header row, in the house style.
pub fn table<I, S>(header: I) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<comfy_table::Cell>,
{
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    table
}

/// Prints a value as pretty JSON.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A time as the tables show it (`2025-06-01 12:00:00`, UTC), or `-` for none.
pub fn time(at: Option<flotilla_core::Timestamp>) -> String {
    at.map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}
