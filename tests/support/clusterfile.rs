//! Clusterfile documents for the tests that install onto testbed hosts.

use std::fmt::Write as _;

use super::testbed::{TestHost, Testbed};

/// A Clusterfile of cluster `name` with data root `data_root`, as root with the testbed's key,
/// one `hosts` entry per (host, role), then `extra` (more spec lines or documents).
pub fn cluster(
    name: &str,
    data_root: &str,
    hosts: &[(&TestHost, &str)],
    bed: &Testbed,
    extra: &str,
) -> String {
    let mut text = format!(
        "apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n  dataRoot: {data_root}\n  ssh: {{user: root, pk: {}}}\n  hosts:\n",
        bed.key_path().display()
    );
    for (host, role) in hosts {
        writeln!(text, "    - ips: [{}]\n      roles: [{role}]", host.ip).unwrap();
    }
    text.push_str(extra);
    text
}

/// A SHELL plugin document, `---` first so it appends to a Clusterfile: `name` runs `script` at
/// `action`; `extra_spec` holds further spec lines (`scope`, `timeout`), each indented two spaces
/// and ending in a newline.
pub fn shell_plugin(name: &str, action: &str, extra_spec: &str, script: &str) -> String {
    let mut doc = format!(
        "---\napiVersion: sealer.io/v1\nkind: Plugin\nmetadata:\n  name: {name}\nspec:\n  type: SHELL\n  action: {action}\n{extra_spec}  data: |\n"
    );
    for line in script.lines() {
        writeln!(doc, "    {line}").unwrap();
    }
    doc
}
