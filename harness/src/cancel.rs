//! Cancellation: a token handed down from `main` to every layer that waits or runs a
//! command. It is a leaf: it knows nothing of providers, runs or records.
//!
//! `main` turns SIGINT and SIGTERM into [`CancelToken::cancel`] ([`CancelToken::on_signals`],
//! signal-hook); a command being waited for is then killed, a sleep returns at once, and the
//! run unwinds through its `Drop`s, which tear down what it made (VMs, namespaces, processes).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A cancellation flag shared by clones; waiting on it wakes as soon as it is set.
#[derive(Debug, Clone, Default)]
pub struct CancelToken {
    inner: Arc<(Mutex<bool>, Condvar)>,
}

/// The error of a wait that was cut short by [`CancelToken::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled (SIGINT/SIGTERM)")]
pub struct Cancelled;

impl CancelToken {
    /// A token nobody has cancelled yet.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Set the flag and wake every waiter.
    pub fn cancel(&self) {
        let (m, cv) = &*self.inner;
        *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        *self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(Cancelled)` once cancelled.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }

    /// Sleep `d`, or less when cancelled meanwhile (then `Err`).
    pub fn sleep(&self, d: Duration) -> Result<(), Cancelled> {
        let deadline = Instant::now() + d;
        let (m, cv) = &*self.inner;
        let mut done = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *done {
                return Err(Cancelled);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            done = cv
                .wait_timeout(done, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Cancel this token on SIGINT or SIGTERM (a thread of signal-hook's iterator). A second
    /// signal after the first is left to its default action, so a stuck tear-down can still
    /// be interrupted by hand.
    pub fn on_signals(&self) -> std::io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let token = self.clone();
        std::thread::Builder::new()
            .name("haul-harness-signals".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    eprintln!("haul-harness: signal {sig}: stopping after clean-up");
                    token.cancel();
                }
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_wakes_a_sleeper() {
        let t = CancelToken::new();
        let t2 = t.clone();
        let start = Instant::now();
        let h = std::thread::spawn(move || t2.sleep(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        t.cancel();
        assert_eq!(h.join().unwrap(), Err(Cancelled));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(t.is_cancelled() && t.check().is_err());
    }

    #[test]
    fn sleep_runs_out_when_not_cancelled() {
        let t = CancelToken::new();
        assert_eq!(t.sleep(Duration::from_millis(20)), Ok(()));
        assert!(t.check().is_ok());
    }
}
