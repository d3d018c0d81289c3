//! Tests that cannot run here are reported as skipped, with the reason, never as passed.
//!
//! A test lists what it [`Need`]s; [`run`] (libtest-mimic, the same command line as cargo's
//! own test harness: filters, `--list`, `--ignored`, `--test-threads`) checks the needs when
//! the test is about to run and reports a test with a missing one as
//! `test NAME ... ignored, needs root`. The checks run once per process.
//!
//! ```text
//! use haul_test_support::{test, Need::*};
//! fn main() -> std::process::ExitCode {
//!     haul_test_support::run(vec![
//!         test!(post_copy_moves_mtouch, Root, Criu, CriuFeature("uffd-noncoop")),
//!         test!(parses_a_report),
//!     ])
//! }
//! ```

use std::panic::AssertUnwindSafe;
use std::process::{Command, ExitCode, Stdio};
use std::sync::OnceLock;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// Something a test needs from the machine it runs on.
#[derive(Debug, Clone, Copy)]
pub enum Need {
    /// Root (network and pid namespaces, CRIU).
    Root,
    /// A CRIU >= 4.1 on PATH (or at /usr/local/sbin/criu) that passes `criu check`.
    Criu,
    /// `criu check --feature NAME` passes: `mem_dirty_track` (soft-dirty, pre-copy),
    /// `uffd-noncoop` (lazy pages, post-copy).
    CriuFeature(&'static str),
    /// A slow tier, run only when one of these environment variables is set (`CI` is set by
    /// CI).
    OptIn(&'static [&'static str]),
    /// Anything else: the reason it is missing, or `None`.
    Check(fn() -> Option<String>),
}

/// The CRIU binary tests use: `criu` on PATH, else `/usr/local/sbin/criu` (scripts/setup.sh).
pub fn criu_binary() -> String {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("criu").is_file()))
        .unwrap_or(false);
    if on_path || !std::path::Path::new("/usr/local/sbin/criu").is_file() {
        "criu".into()
    } else {
        "/usr/local/sbin/criu".into()
    }
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn criu_missing() -> Option<String> {
    static CACHE: OnceLock<Option<String>> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            let criu = criu_binary();
            let out = Command::new(&criu).arg("--version").output();
            let version = match out {
                Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .find_map(|l| l.strip_prefix("Version:").map(|v| v.trim().to_string()))
                    .unwrap_or_default(),
                _ => return Some("needs CRIU >= 4.1 (scripts/setup.sh builds it)".into()),
            };
            let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            if (major, minor) < (4, 1) {
                return Some(format!(
                    "needs CRIU >= 4.1, found {version} at {criu} (scripts/setup.sh builds one)"
                ));
            }
            if !is_root() {
                return Some("needs root (for `criu check`)".into());
            }
            if !quiet(Command::new(&criu).arg("check")) {
                return Some(format!(
                    "needs a CRIU that passes `{criu} check` on this kernel"
                ));
            }
            None
        })
        .clone()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl Need {
    /// Why this machine does not have it, or `None` when it does.
    pub fn missing(&self) -> Option<String> {
        match self {
            Need::Root => (!is_root()).then(|| "needs root".into()),
            Need::Criu => criu_missing(),
            Need::CriuFeature(f) => {
                if let Some(why) = criu_missing() {
                    return Some(why);
                }
                (!quiet(Command::new(criu_binary()).args(["check", "--feature", f])))
                    .then(|| format!("needs CRIU feature {f} on this kernel"))
            }
            Need::OptIn(vars) => (!vars.iter().any(|v| std::env::var_os(v).is_some()))
                .then(|| format!("slow tier: set {} to run it", vars.join(" or "))),
            Need::Check(f) => f(),
        }
    }
}

/// The panic payload of [`skip`]: the runner reports the test as ignored with this reason.
#[derive(Debug, Clone)]
pub struct Skipped(pub String);

/// Stop the running test and report it as ignored, with `why` (for a need only the test
/// itself can find out, e.g. a feature of the CRIU it started). Only under [`run`].
pub fn skip(why: impl Into<String>) -> ! {
    std::panic::panic_any(Skipped(why.into()))
}

/// One test: a name, what it needs, the function.
pub struct Test {
    name: String,
    needs: Vec<Need>,
    opt_in: bool,
    f: Box<dyn FnOnce() + Send + 'static>,
}

impl Test {
    /// A test named `name` running `f` (which panics to fail, as a `#[test]` does).
    pub fn new(name: impl Into<String>, f: impl FnOnce() + Send + 'static) -> Test {
        Test {
            name: name.into(),
            needs: Vec::new(),
            opt_in: false,
            f: Box::new(f),
        }
    }

    /// What it needs; it is reported as ignored, with the reason, when one is missing.
    pub fn needs(mut self, needs: impl IntoIterator<Item = Need>) -> Test {
        self.needs.extend(needs);
        self
    }

    /// Opt-in, as `#[ignore]` is: it runs only with `--ignored` or `--include-ignored` (a
    /// measurement run by hand, under the measurement lock); otherwise it is listed as ignored.
    pub fn opt_in(mut self) -> Test {
        self.opt_in = true;
        self
    }

    fn trial(self) -> Trial {
        let Test {
            name,
            needs,
            opt_in,
            f,
        } = self;
        Trial::ignorable_test(name, move || {
            if let Some(why) = needs.iter().find_map(Need::missing) {
                return Ok(Completion::ignored_with(why));
            }
            match std::panic::catch_unwind(AssertUnwindSafe(f)) {
                Ok(()) => Ok(Completion::Completed),
                Err(p) => match p.downcast_ref::<Skipped>() {
                    Some(Skipped(why)) => Ok(Completion::ignored_with(why)),
                    None => Err(p),
                },
            }
            .map_err(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into());
                Failed::from(msg)
            })
        })
        .with_ignored_flag(opt_in)
    }
}

/// `Test::new(stringify!(f), f).needs([needs...])`.
#[macro_export]
macro_rules! test {
    ($f:path $(, $need:expr)* $(,)?) => {
        $crate::Test::new(stringify!($f), $f).needs([$($need),*])
    };
}

/// Run `tests` with cargo's test command line; the exit code says whether any failed.
pub fn run(tests: Vec<Test>) -> ExitCode {
    // a skip is not a crash: no panic message for it
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.payload().is::<Skipped>() {
            hook(info)
        }
    }));
    let args = Arguments::from_args();
    libtest_mimic::run(&args, tests.into_iter().map(Test::trial).collect()).exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opt_in_names_its_variables() {
        let why = Need::OptIn(&["HAUL_TEST_SUPPORT_NEVER_SET"])
            .missing()
            .unwrap();
        assert!(why.contains("HAUL_TEST_SUPPORT_NEVER_SET"), "{why}");
        assert!(Need::Check(|| None).missing().is_none());
    }
}
