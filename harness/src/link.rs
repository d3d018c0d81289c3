//! The link between the two nodes: its TCP bandwidth, measured once per run with
//! `link-probe` (the link floor of every record is resident memory / this bandwidth), and
//! the bytes that crossed it during one migration (the source's interface counters, the
//! same for haul and plain CRIU).

use std::time::Duration;

use crate::node::{shell_quote, Node, NodeError};
use crate::provider::Provider;

/// Bandwidth from the source to the destination (bytes/s): `bytes` streamed by `link-probe`
/// over TCP to `port` on the destination's address.
pub fn bandwidth(provider: &dyn Provider, port: u16, bytes: u64) -> Result<f64, NodeError> {
    let (src, dst) = (provider.source(), provider.destination());
    let addr = format!("{}:{port}", dst.addr());
    let log = format!("{}/link-probe.log", dst.work_dir());
    let pid = dst.spawn(
        &[dst.bin("link-probe"), "listen".into(), addr.clone()],
        &log,
    )?;
    let out = src.exec(
        &[
            src.bin("link-probe"),
            "send".into(),
            addr,
            bytes.to_string(),
        ],
        None,
        Duration::from_secs(600),
    );
    dst.terminate(pid);
    let out = out?;
    let text = out.stdout_text();
    let mut f = text.split_whitespace();
    match (
        f.next().and_then(|n| n.parse::<u64>().ok()),
        f.next().and_then(|s| s.parse::<f64>().ok()),
    ) {
        (Some(n), Some(secs)) if out.success() && n == bytes && secs > 0.0 => Ok(n as f64 / secs),
        _ => Err(src.failed("link-probe send", &out)),
    }
}

/// The source's interface on the link (the one holding its address), found once.
pub fn interface(node: &dyn Node) -> Option<String> {
    let script = format!(
        "ip -o -4 addr show | awk -v a={} '{{ split($4, p, \"/\"); if (p[1] == a) {{ print $2; exit }} }}'",
        shell_quote(node.addr())
    );
    node.sh(&script, Duration::from_secs(30))
        .ok()
        .map(|o| o.stdout_text().trim().to_string())
        .filter(|d| !d.is_empty())
}

/// Bytes received plus sent on `dev` so far (`/proc/net/dev`, which, unlike `/sys`, shows the
/// reader's own network namespace).
pub fn counters(node: &dyn Node, dev: &str) -> Option<u64> {
    let script = format!(
        "sed 's/:/ /' /proc/net/dev | awk -v d={} '$1 == d {{ printf \"%.0f\\n\", $2 + $10 }}'",
        shell_quote(dev)
    );
    node.sh(&script, Duration::from_secs(30))
        .ok()
        .filter(|o| o.success())
        .and_then(|o| o.stdout_text().trim().parse().ok())
}
