//! The Terraform dashboard names only metrics the code emits: infra/worker-metrics.json, which the
//! module reads (and `terraform test` checks every widget against), equals src/metrics.rs.

use rds_rotator::metrics::{METRICS, STEP_DIMENSION, STEP_METRIC};
use serde_json::{json, Value};

#[test]
fn the_dashboards_list_of_metrics_is_what_the_worker_emits() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/infra/worker-metrics.json");
    let listed: Value = serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}")),
    )
    .unwrap();
    let mut emitted: Vec<&str> = METRICS.iter().map(|(name, _)| *name).collect();
    emitted.sort_unstable();
    assert_eq!(
        listed,
        json!({"metrics": emitted, "step_metrics": [STEP_METRIC], "step_dimension": STEP_DIMENSION}),
        "infra/worker-metrics.json differs from src/metrics.rs"
    );
}
