//! Fuzz check `kubefile`: text parsed as a Kubefile, then every instruction expanded with the
//! ARG and ENV values in scope, as the builder walks the file (with a few `--build-arg`s).
//!
//! Invariants: no panic; every instruction and error names a line of the file; expansion stays
//! bounded (no ARG or ENV value grows past [`EXPANDED_LIMIT`], no allocation past the
//! allocation limit the targets and the stable replay run under).
//!
//! Shared by the fuzz target and the stable replay (`tests/fuzz_corpus.rs`), which include this
//! file by path; `crate::kubefile` is the library's module in both.

use std::collections::BTreeMap;

use crate::kubefile::{self, InstructionKind};

/// Bytes any ARG or ENV value may reach; a Kubefile whose expansion grows past this without an
/// error is unbounded (nine doubling ARG lines reach 10^10 bytes).
pub const EXPANDED_LIMIT: usize = 16 << 20;

const BUILD_ARGS: &[(&str, &str)] = &[
    ("ARCH", "amd64"),
    ("VERSION", "v1.2.3"),
    ("EMPTY", ""),
    ("REGISTRY", "registry.local:5000"),
];

/// Run one input. Panics when an invariant does not hold.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines = text.lines().count() + 1;
    let file = match kubefile::parse(&text, "Kubefile") {
        Ok(file) => file,
        Err(e) => {
            let _ = e.to_string();
            assert!(
                e.line() <= lines,
                "error names line {} of {lines}: {e}",
                e.line()
            );
            assert_eq!(e.file(), "Kubefile");
            return;
        }
    };
    let _ = serde_json::to_string(&file);
    let _ = file.base_image();
    let _ = file.check_apps(&|app| app == "calico");
    let build_args: BTreeMap<&str, &str> = BUILD_ARGS.iter().copied().collect();
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for instruction in &file.instructions {
        assert!(
            (1..=lines).contains(&instruction.line),
            "instruction on line {} of {lines}",
            instruction.line
        );
        let _ = instruction.kind.keyword();
        let _ = instruction.kind.is_scratch();
        let _ = instruction.kind.declared_app();
        let lookup = |name: &str| env.get(name).or_else(|| args.get(name)).cloned();
        let expanded = match instruction.expanded("Kubefile", &lookup) {
            Ok(expanded) => expanded,
            Err(e) => {
                let _ = e.to_string();
                assert_eq!(
                    e.line(),
                    instruction.line,
                    "expansion error on another line: {e}"
                );
                continue;
            }
        };
        let _ = serde_json::to_string(&expanded);
        match (&instruction.kind, &expanded.kind) {
            (InstructionKind::Arg { name, .. }, InstructionKind::Arg { default, .. }) => {
                let value = build_args
                    .get(name.as_str())
                    .map(|v| v.to_string())
                    .or_else(|| default.clone());
                if let Some(value) = value {
                    args.insert(name.clone(), value);
                }
            }
            (_, InstructionKind::Env(pairs)) => {
                for (k, v) in pairs {
                    env.insert(k.clone(), v.clone());
                }
            }
            _ => {}
        }
        for (name, value) in args.iter().chain(env.iter()) {
            assert!(
                value.len() <= EXPANDED_LIMIT,
                "line {}: `{name}` expanded to {} bytes and nothing stopped it",
                instruction.line,
                value.len()
            );
        }
    }
}
