//! JSON Schemas of constraints that utoipa's field attributes cannot state on their own: a list
//! of bounded numbers, a value that is one of several formats, a positive amount. Each function
//! describes exactly what the server's validation accepts (`#[schema(schema_with = …)]`).

use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{KnownFormat, RefOr, SchemaFormat};

/// Budget alert thresholds: percentages of the limit, 1 to 1000 each (`null` for the default).
pub fn thresholds() -> RefOr<Schema> {
    ArrayBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::Array,
            Type::Null,
        ]))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(1000)),
        )
        .description(Some(
            "Percentages of the limit, 1 to 1000 each (default: `[gateway] default_thresholds`, 50/80/90/100).",
        ))
        .into()
}

/// An amount above zero: a decimal string of at most 7 integer and 12 fractional digits, or a
/// whole number of dollars from 1 (a budget's limit).
pub fn positive_money() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(
                    r"^\$?([1-9][0-9]{0,6}(\.[0-9]{1,12})?|0\.[0-9]{0,11}[1-9])$",
                ))
                .examples([serde_json::json!("250.00")]),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(u32::MAX)),
        )
        .description(Some(
            "The limit in US dollars, above 0: a decimal string (`\"250.00\"`) or a whole number",
        ))
        .into()
}

/// A point in time: RFC 3339, or a date meaning its midnight UTC.
pub fn time_or_date() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Date))),
        )
        .into()
}
