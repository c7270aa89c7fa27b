//! How several runs of one figure are summed up in a JSON line: median,
//! min, max and every run, rounded.

use serde_json::{json, Value};

/// Median, min and max of several runs, and the runs, to one decimal.
pub fn stats(values: &[f64]) -> Value {
    stats_to(values, 1)
}

/// [`stats`] to three decimals, for figures well under one.
pub fn stats_precise(values: &[f64]) -> Value {
    stats_to(values, 3)
}

fn stats_to(values: &[f64], decimals: i32) -> Value {
    let scale = 10f64.powi(decimals);
    let round = |v: f64| (v * scale).round() / scale;
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    json!({
        "median": round(sorted[sorted.len() / 2]),
        "min": round(sorted[0]),
        "max": round(sorted[sorted.len() - 1]),
        "runs": sorted.iter().map(|v| round(*v)).collect::<Vec<_>>(),
    })
}
