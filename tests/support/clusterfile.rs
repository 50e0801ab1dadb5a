//! Clusterfile documents for the tests that install onto testbed hosts.

use std::fmt::Write as _;

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
