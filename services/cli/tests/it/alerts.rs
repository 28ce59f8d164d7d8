//! The shipped Prometheus alert rules are valid, as Prometheus's own
//! checker sees them.

use std::path::Path;

use crate::support::tool;

#[test]
fn the_alert_rules_pass_promtool() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus/alerts.yml");
    let output = std::process::Command::new(tool("TRIBUTARY_PROMTOOL"))
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool does not run ({e}): scripts/tools.sh unpacks it from Debian's prometheus package")
        });
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "promtool rejects {}:\n{said}\n{}",
        rules.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    // promtool reports how many rules it read: an empty file would pass too.
    assert!(said.contains("SUCCESS: 10 rules found"), "{said}");
}
