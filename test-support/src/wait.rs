//! Waiting for a condition with a deadline that names what was waited for.

use std::time::{Duration, Instant};

/// Generous: the machines have 2 cores shared with builds and other tests.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Check `cond` every 20 ms until it holds; panics naming `what` after `timeout`.
///
/// For conditions that no event announces (a process gone from /proc, a line in a file
/// another process appends to). Where the event can be waited on directly (a child's exit,
/// a line on a pipe), wait on it instead.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Read lines from `r` until one contains `needle`; returns what was read (for messages).
/// Blocks on the reader itself: the event, not a poll.
pub fn line_containing(r: impl std::io::Read, needle: &str) -> Result<String, String> {
    use std::io::BufRead;
    let mut seen = String::new();
    for line in std::io::BufReader::new(r).lines() {
        let line = line.map_err(|e| format!("{e} after: {seen}"))?;
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(needle) {
            return Ok(seen);
        }
    }
    Err(format!("end of output before {needle:?}: {seen}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_line() {
        let text = b"a\nhaul serve on 1.2.3.4\nb\n";
        assert!(line_containing(&text[..], "serve on").is_ok());
        assert!(line_containing(&text[..], "nope").is_err());
    }

    #[test]
    #[should_panic(expected = "waiting for nothing")]
    fn names_what_it_waited_for() {
        wait_for("nothing", Duration::from_millis(50), || false);
    }
}
