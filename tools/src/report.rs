//! One way to print a report: as text (its `Display`) or as pretty JSON (`--json`).

use serde::Serialize;
use std::fmt::Display;

/// Prints `report` to stdout as JSON when `json`, else as text.
pub fn print_report<T: Serialize + Display + ?Sized>(
    report: &T,
    json: bool,
) -> serde_json::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
