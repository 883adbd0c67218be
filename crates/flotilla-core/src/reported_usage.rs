//! Token usage an agent reports in its `/execute` answer (`ExecuteResponse.usage`), as the
//! control plane counts it. An agent may send anything there, so what reaches metrics is bounded:
//! a model not in the model table counts under the one label value [`OTHER_MODEL`] (the label
//! set stays the table's size), each number is capped at [`MAX_REPORTED_TOKENS`] and sums
//! saturate. Reported tokens never drive the per-tenant hourly token signal (and so never the
//! alert `rate_limit` action); only tokens the gateway metered do.

use crate::wire::ModelUsage;
use std::collections::BTreeMap;

/// Most tokens of one direction counted from one report entry.
pub const MAX_REPORTED_TOKENS: u64 = 1_000_000_000;

/// The label value of models the model table does not know.
pub const OTHER_MODEL: &str = "other";

/// Input and output tokens by model label, from one answer's report; `known` says whether a
/// model is in the model table.
pub fn tally(usage: &[ModelUsage], known: impl Fn(&str) -> bool) -> BTreeMap<&str, (u64, u64)> {
    let mut out: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for entry in usage {
        let label = if known(&entry.model) {
            entry.model.as_str()
        } else {
            OTHER_MODEL
        };
        let sum = out.entry(label).or_default();
        sum.0 = sum
            .0
            .saturating_add(entry.input_tokens.min(MAX_REPORTED_TOKENS));
        sum.1 = sum
            .1
            .saturating_add(entry.output_tokens.min(MAX_REPORTED_TOKENS));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(model: &str, input: u64, output: u64) -> ModelUsage {
        ModelUsage {
            model: model.to_owned(),
            input_tokens: input,
            output_tokens: output,
        }
    }

    #[test]
    fn unknown_models_are_other_and_numbers_are_capped() {
        let usage = [
            entry("gpt-4o", 10, 20),
            entry("made-up-1", u64::MAX, 1),
            entry("made-up-2", u64::MAX, 2),
            entry("gpt-4o", 5, u64::MAX),
        ];
        let tally = tally(&usage, |m| m == "gpt-4o");
        assert_eq!(
            tally.into_iter().collect::<Vec<_>>(),
            [
                ("gpt-4o", (15, 20 + MAX_REPORTED_TOKENS)),
                (OTHER_MODEL, (2 * MAX_REPORTED_TOKENS, 3)),
            ]
        );
    }
}
