//! The metrics table of `docs/operations.md` against the registry: every family, its type,
//! its label and the label values that exist from start-up.

use super::*;
use prometheus::proto::MetricType;

/// One row of the Metrics table in `docs/operations.md`.
struct Row {
    name: String,
    label: Option<String>,
    kind: String,
    meaning: String,
}

fn documented() -> Vec<Row> {
    let doc = include_str!("../../../../docs/operations.md");
    let section = doc
        .split("\n## Metrics\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap_or_default();
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            let name = cells[0].trim_matches('`');
            let (name, label) = match name.split_once('{') {
                Some((n, l)) => (n, Some(l.trim_end_matches('}').to_string())),
                None => (name, None),
            };
            Row {
                name: name.to_string(),
                label,
                kind: cells.get(1).unwrap_or(&"").to_string(),
                meaning: cells.get(2).unwrap_or(&"").to_string(),
            }
        })
        .collect()
}

/// The table in docs/operations.md lists exactly the registered families, each with its
/// type and label, and names every label value that exists from start-up.
#[test]
fn operations_metrics_table_matches_the_registry() {
    let metrics = Metrics::new().unwrap();
    let rows = documented();
    assert!(
        rows.len() > 20,
        "no metrics table found in docs/operations.md"
    );
    // Series that exist from start-up, by family (their values must be documented).
    let mut at_start: Vec<(String, String)> = Vec::new();
    for family in metrics.registry.gather() {
        for m in family.get_metric() {
            for l in m.get_label() {
                at_start.push((family.name().to_string(), l.value().to_string()));
            }
        }
    }
    // Every labelled family gets a series, so that it is gathered.
    for vec in [
        &metrics.connections_closed,
        &metrics.auth_failures,
        &metrics.connections_refused,
        &metrics.publish_requests,
        &metrics.admin_dropped,
        &metrics.events_dropped,
        &metrics.broker_malformed,
        &metrics.resyncs,
    ] {
        vec.with_label_values(&["x"]).inc();
    }
    metrics
        .control_requests
        .with_label_values(&["x", "y"])
        .inc();
    let families = metrics.registry.gather();
    for family in &families {
        let full = family.name();
        let name = full.strip_prefix("gleepost_gateway_").unwrap_or(full);
        if name.starts_with("process_") {
            assert!(
                rows.iter().any(|r| r.name == "process_*"),
                "no process_* row"
            );
            continue;
        }
        let row = rows
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name} is missing from operations.md's metrics table"));
        let kind = match family.get_field_type() {
            MetricType::COUNTER => "counter",
            MetricType::GAUGE => "gauge",
            MetricType::HISTOGRAM => "histogram",
            other => panic!("{name}: unexpected type {other:?}"),
        };
        assert_eq!(row.kind, kind, "type of {name}");
        let names: Vec<&str> = family.get_metric()[0]
            .get_label()
            .iter()
            .map(|l| l.name())
            .collect();
        let label = (!names.is_empty()).then(|| names.join(","));
        assert_eq!(row.label, label, "label of {name}");
    }
    for row in rows.iter().filter(|r| r.name != "process_*") {
        assert!(
            families
                .iter()
                .any(|f| f.name() == format!("gleepost_gateway_{}", row.name)),
            "operations.md documents {}, which is not registered",
            row.name
        );
    }
    for (family, value) in at_start {
        let name = family.trim_start_matches("gleepost_gateway_");
        let row = rows.iter().find(|r| r.name == name).unwrap();
        assert!(
            row.meaning.contains(&format!("`{value}`")),
            "operations.md does not name {name}{{{value:?}}}"
        );
    }
}
