//! The shared key and the harness's own `haul serve` on the destination: a key made with
//! `haul keygen` on the source and copied to the destination, then `haul serve` started and
//! waited for (its "haul serve on" line, watched for on the destination in one command).

use std::time::Duration;

use crate::node::{shell_quote, Node, NodeError};
use crate::provider::Provider;

/// `haul serve` did not come up.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A node command failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// It exited or never said it listens.
    #[error("haul serve did not start on the destination ({log}): {why}")]
    NotListening {
        /// Its log on the destination.
        log: String,
        /// The end of that log.
        why: String,
    },
}

/// A running `haul serve` and the key files on both nodes; stopped when dropped.
#[derive(Debug)]
pub struct HaulServe<'a> {
    node: &'a dyn Node,
    pid: i32,
    /// The port it listens on (on the destination's address).
    pub port: u16,
    /// The key file on the source.
    pub source_key: String,
    /// Its log on the destination.
    pub log: String,
}

impl<'a> HaulServe<'a> {
    /// Make a key, share it, start `haul serve` on the destination's address and `port`.
    pub fn start(provider: &'a dyn Provider, port: u16) -> Result<HaulServe<'a>, ServeError> {
        let (src, dst) = (provider.source(), provider.destination());
        let t = Duration::from_secs(60);
        let (ks, kd) = (
            format!("{}/key", src.work_dir()),
            format!("{}/key", dst.work_dir()),
        );
        let out = src.exec(&[src.bin("haul"), "keygen".into(), ks.clone()], None, t)?;
        if !out.success() {
            return Err(src.failed("haul keygen", &out).into());
        }
        let bytes = src.read_file(&ks)?;
        if kd != ks {
            dst.write_file(&kd, &bytes)?;
        }
        let log = format!("{}/serve.log", dst.work_dir());
        let argv = vec![
            dst.bin("haul"),
            "serve".into(),
            "--listen".into(),
            format!("{}:{port}", dst.addr()),
            "--key".into(),
            kd,
            "--img-path".into(),
            format!("{}/img", dst.work_dir()),
        ];
        let pid = dst.spawn(&argv, &log)?;
        let serve = HaulServe {
            node: dst,
            pid,
            port,
            source_key: ks,
            log: log.clone(),
        };
        let q = shell_quote(&log);
        let ready = dst.wait_until(
            &format!("grep -q 'haul serve on' {q} 2>/dev/null"),
            Some(pid),
            Duration::from_secs(60),
        )?;
        if !ready {
            let tail = dst
                .sh(&format!("tail -n 5 {q} 2>/dev/null; true"), t)
                .map(|o| o.stdout_text().trim().replace('\n', " | "))
                .unwrap_or_default();
            return Err(ServeError::NotListening { log, why: tail });
        }
        Ok(serve)
    }

    /// The size of its log now (to show what it logged during one migration).
    pub fn log_mark(&self) -> u64 {
        self.node
            .sh(
                &format!("wc -c < {} 2>/dev/null; true", shell_quote(&self.log)),
                Duration::from_secs(30),
            )
            .ok()
            .and_then(|o| o.stdout_text().trim().parse().ok())
            .unwrap_or(0)
    }

    /// The last `n` lines it logged after `mark`.
    pub fn log_since(&self, mark: u64, n: usize) -> String {
        self.node
            .sh(
                &format!(
                    "tail -c +{} {} 2>/dev/null | tail -n {n}; true",
                    mark + 1,
                    shell_quote(&self.log)
                ),
                Duration::from_secs(30),
            )
            .map(|o| o.tail(n))
            .unwrap_or_default()
    }
}

impl Drop for HaulServe<'_> {
    fn drop(&mut self) {
        self.node.terminate(self.pid);
    }
}
