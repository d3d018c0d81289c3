//! What each node is: its kernel, its CRIU, haul's version, and which strategies `haul check`
//! says it can run. [`capabilities`] reads `haul check --json` through haul's own type
//! ([`haul::preflight::node::NodeCheck`]); [`parse_check_text`] still reads the text of a
//! haul that predates `--json` (an older binary under `--bin-dir`).

use std::collections::BTreeMap;
use std::time::Duration;

use haul::migrate::Strategy;
use haul::preflight::node::NodeCheck;

use crate::node::Node;
use crate::record::NodeInfo;

/// What `haul check` says about a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Strategies this node cannot run, with why (`needs ...`).
    pub unavailable: BTreeMap<String, String>,
    /// What `auto` resolves to on this node.
    pub auto: Option<String>,
}

/// Parse `haul check`'s text output (a haul older than `haul check --json`):
///
/// ```text
///   pre-copy   unavailable: needs memory dirty tracking (soft-dirty) on the source kernel
///   auto       -> post-copy: no memory tracking
/// ```
pub fn parse_check_text(text: &str) -> Capabilities {
    let mut c = Capabilities::default();
    for line in text.lines() {
        let t = line.trim();
        let Some((name, rest)) = t.split_once(char::is_whitespace) else {
            continue;
        };
        let rest = rest.trim();
        if let Some(why) = rest.strip_prefix("unavailable:") {
            c.unavailable
                .insert(name.to_string(), why.trim().to_string());
        } else if let (Some(to), "auto") = (rest.strip_prefix("->"), name) {
            let to = to.trim();
            c.auto = Some(to.split(':').next().unwrap_or(to).trim().to_string());
        }
    }
    c
}

/// The capabilities in `haul check --json`'s answer. `auto` is what it takes for a typical
/// tree by the node's features alone (per migration, haul decides by estimated cost).
pub fn from_node_check(c: &NodeCheck) -> Capabilities {
    let unavailable = c
        .strategies
        .iter()
        .filter_map(|s| {
            s.missing
                .as_ref()
                .map(|m| (s.strategy.name().to_string(), format!("needs {m}")))
        })
        .collect();
    let (auto, _) = Strategy::Auto.resolve(c.features, c.features);
    Capabilities {
        unavailable,
        auto: Some(auto.name().to_string()),
    }
}

/// What `haul check` says about `node` (`--json`, or the text of an older haul).
pub fn capabilities(node: &dyn Node) -> Capabilities {
    let t = Duration::from_secs(60);
    let json = node.exec(
        &[node.bin("haul"), "check".into(), "--json".into()],
        None,
        t,
    );
    if let Some(c) = json
        .as_ref()
        .ok()
        .and_then(|o| serde_json::from_str::<NodeCheck>(&o.stdout_text()).ok())
    {
        return from_node_check(&c);
    }
    let out = node.exec(&[node.bin("haul"), "check".into()], None, t);
    out.map(|o| parse_check_text(&o.stdout_text()))
        .unwrap_or_default()
}

/// Kernel, CRIU, haul and capabilities of `node`.
pub fn node_info(n: &dyn Node) -> NodeInfo {
    let t = Duration::from_secs(60);
    let text = |argv: Vec<String>| {
        n.exec(&argv, None, t)
            .map(|o| o.stdout_text().trim().to_string())
            .unwrap_or_default()
    };
    let criu = text(vec![n.criu(), "--version".into()]);
    let caps = capabilities(n);
    NodeInfo {
        node: n.describe(),
        kernel: text(vec!["uname".into(), "-r".into()]),
        criu_version: criu
            .lines()
            .find_map(|l| l.strip_prefix("Version:"))
            .unwrap_or(&criu)
            .trim()
            .to_string(),
        haul_version: text(vec![n.bin("haul"), "--version".into()]),
        unavailable: caps.unavailable,
        auto: caps.auto,
    }
}

/// The short git revision and dirtiness of `tree`.
pub fn git_revision(tree: Option<&std::path::Path>) -> (String, bool) {
    let Some(tree) = tree else {
        return ("unknown".into(), false);
    };
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(tree)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let rev = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .map(|s| !s.is_empty())
        .unwrap_or(false);
    (rev, dirty)
}

/// This machine, for the records: host name and cores.
pub fn harness_host() -> String {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(
        "{host}, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haul_check_output() {
        let text = "CRIU version 4.2.1 at /usr/local/sbin/criu\n\
strategies on this node (as source and destination):\n  stop-copy  available\n  pre-copy   unavailable: needs memory dirty tracking (soft-dirty) on the source kernel\n  post-copy  available\n  hybrid     unavailable: needs memory dirty tracking (soft-dirty) on the source kernel\n  auto       -> post-copy: no memory tracking\n";
        let c = parse_check_text(text);
        assert_eq!(c.unavailable.len(), 2);
        assert!(c.unavailable["pre-copy"].starts_with("needs memory dirty tracking"));
        assert!(c.unavailable.contains_key("hybrid"));
        assert_eq!(c.auto.as_deref(), Some("post-copy"));
    }
}
