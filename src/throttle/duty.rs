//! The freezer duty cycle: where no CPU controller can be used, the tree is frozen for
//! `level` percent of every period and thawed for the rest (what QEMU's auto-converge does to
//! a vCPU: it sleeps that share of each time slice).
//!
//! A thread of its own (not a tokio task), so that stopping it is synchronous and works from
//! `Drop`, also while unwinding from a panic. Every way out of it leaves the cgroup thawed.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::cgroup::CgroupDir;
use super::error::ThrottleError;
use crate::migrate::converge::ThrottleLevel;

/// The default period of the duty cycle (QEMU's vCPU time slice is 10 ms; a cgroup freeze
/// takes a few ms to settle, so slices here are 100 ms).
pub const DEFAULT_PERIOD: Duration = Duration::from_millis(100);

/// How long a thaw may take to settle before it is reported as failed.
const THAW_PATIENCE: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct State {
    level: ThrottleLevel,
    paused: bool,
    stop: bool,
    /// Whether the thread has the cgroup frozen right now.
    frozen: bool,
    /// Bumped on every change, so a sleeping cycle wakes for it.
    generation: u64,
    /// The last error the thread met (a write that failed).
    error: Option<String>,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

/// A running duty cycle on one cgroup.
#[derive(Debug)]
pub struct DutyCycle {
    shared: Shared,
    thread: Option<JoinHandle<()>>,
    cgroup: CgroupDir,
}

impl DutyCycle {
    /// Starts the cycle at level 0 (thawed) on `cgroup`.
    pub fn start(cgroup: CgroupDir, period: Duration) -> Result<DutyCycle, ThrottleError> {
        cgroup.set_frozen(false)?;
        let shared: Shared = Arc::new((
            Mutex::new(State {
                level: ThrottleLevel::NONE,
                paused: false,
                stop: false,
                frozen: false,
                generation: 0,
                error: None,
            }),
            Condvar::new(),
        ));
        let s2 = shared.clone();
        let cg = cgroup.clone();
        let period = period.max(Duration::from_millis(10));
        let thread = std::thread::Builder::new()
            .name("haul-freezer-duty".into())
            .spawn(move || run(s2, cg, period))
            .map_err(|e| {
                ThrottleError::cgroup("start a duty-cycle thread for", &cgroup.path, None, e)
            })?;
        Ok(DutyCycle {
            shared,
            thread: Some(thread),
            cgroup,
        })
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        let (m, cv) = &*self.shared;
        let mut s = m.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
        s.generation += 1;
        cv.notify_all();
    }

    /// Sets the share of each period the tree spends frozen.
    pub fn set_level(&self, level: ThrottleLevel) {
        self.update(|s| s.level = level);
    }

    /// Holds the tree thawed (e.g. while CRIU seizes it) and waits until it is.
    pub fn pause(&self) -> Result<(), ThrottleError> {
        self.update(|s| s.paused = true);
        self.wait_thawed()
    }

    /// Ends a [`DutyCycle::pause`].
    pub fn resume(&self) {
        self.update(|s| s.paused = false);
    }

    fn wait_thawed(&self) -> Result<(), ThrottleError> {
        let (m, cv) = &*self.shared;
        let end = Instant::now() + THAW_PATIENCE;
        let mut s = m.lock().unwrap_or_else(|e| e.into_inner());
        while s.frozen && Instant::now() < end {
            s = cv
                .wait_timeout(s, Duration::from_millis(5))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(s);
        // The thread thawed (or died); make sure of the cgroup itself.
        self.cgroup.set_frozen(false)?;
        if !self.cgroup.wait_frozen(false, THAW_PATIENCE)? {
            return Err(ThrottleError::cgroup(
                "thaw",
                &self.cgroup.path,
                None,
                std::io::Error::new(std::io::ErrorKind::TimedOut, "still frozen after 2 s"),
            ));
        }
        Ok(())
    }

    /// The last error the cycle met, if any.
    pub fn error(&self) -> Option<String> {
        let (m, _) = &*self.shared;
        m.lock().unwrap_or_else(|e| e.into_inner()).error.clone()
    }

    /// Stops the cycle and leaves the cgroup thawed (idempotent).
    pub fn stop(&mut self) -> Result<(), ThrottleError> {
        self.update(|s| s.stop = true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.cgroup.set_frozen(false)?;
        if self.cgroup.exists() && !self.cgroup.wait_frozen(false, THAW_PATIENCE)? {
            return Err(ThrottleError::cgroup(
                "thaw",
                &self.cgroup.path,
                None,
                std::io::Error::new(std::io::ErrorKind::TimedOut, "still frozen after 2 s"),
            ));
        }
        Ok(())
    }
}

impl Drop for DutyCycle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            if let Err(e) = self.stop() {
                tracing::error!("freezer duty cycle on {}: {e}", self.cgroup.path.display());
            }
        }
    }
}

/// The cycle: frozen for `level` of each period, thawed for the rest; thawed while paused,
/// at level 0 and on the way out.
fn run(shared: Shared, cg: CgroupDir, period: Duration) {
    let (m, cv) = &*shared;
    let set = |frozen: bool, s: &mut State| {
        if let Err(e) = cg.set_frozen(frozen) {
            s.error = Some(e.to_string());
            // never believe it frozen when the write failed
            if frozen {
                return;
            }
        }
        s.frozen = frozen;
    };
    let mut s = m.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if s.stop {
            break;
        }
        let level = s.level;
        if s.paused || level.is_none() {
            if s.frozen {
                set(false, &mut s);
                cv.notify_all();
            }
            let g = s.generation;
            while s.generation == g && !s.stop {
                s = cv.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            continue;
        }
        let frozen_for = period.mul_f64(f64::from(level.percent()) / 100.0);
        let thawed_for = period.saturating_sub(frozen_for);
        // frozen slice
        set(true, &mut s);
        let g = s.generation;
        let end = Instant::now() + frozen_for;
        while s.generation == g && !s.stop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            s = cv
                .wait_timeout(s, end - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        set(false, &mut s);
        cv.notify_all();
        if s.generation != g || s.stop {
            continue;
        }
        // thawed slice
        let end = Instant::now() + thawed_for;
        while s.generation == g && !s.stop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            s = cv
                .wait_timeout(s, end - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
    set(false, &mut s);
    cv.notify_all();
}
