//! haul-launch: start a workload the way CRIU can migrate it, print its host pid, and exit.
//!
//! ```text
//! haul-launch [--netns NAME] [--mntns FILE] [--cwd DIR] [--pidfile F] [--output F] [--no-start-fd] [--no-pidns] -- CMD ARGS...
//! ```
//!
//! CMD becomes pid 1 of a new pid namespace and the leader of its own session, inside the
//! network namespace `/run/netns/NAME` when asked, with its working directory DIR, stdin on
//! /dev/null, stdout and stderr on /dev/null (or `--output`), and no other inherited fd but
//! the start pipe, fd 3, which the workload closes after writing its start code. Prints
//! P.Haul's line `Child <pid> done, code <C>`, where pid is the host pid `haul pid` takes and
//! C is `O` when the workload runs (`L`: its log could not be opened, `M`: mmap failed, `F`:
//! another start failure). Exits 0 for `O`, 1 for another code, 2 when the launch failed.
//! See the `haul_launch` library for the process layout.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use haul_launch::{launch, LaunchSpec, StartProtocol};

/// Start CMD as pid 1 of a new pid namespace, in its own session, and print its host pid.
#[derive(Debug, Parser)]
#[command(name = "haul-launch", version)]
struct Args {
    /// Run inside this network namespace (a name under /run/netns, or a path).
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// Run inside this mount namespace (a namespace file, e.g. a bind-mounted
    /// /proc/PID/ns/mnt): a node's own view of its disks when two nodes share one machine.
    /// Give --cwd and --output as absolute paths (they are resolved there).
    #[arg(long, value_name = "FILE")]
    mntns: Option<PathBuf>,
    /// Working directory of the workload (the shared directory).
    #[arg(long, value_name = "DIR", default_value = ".")]
    cwd: PathBuf,
    /// Write the host pid to this file (atomically) once the workload started.
    #[arg(long, value_name = "FILE")]
    pidfile: Option<PathBuf>,
    /// Send the workload's stdout and stderr to this file instead of /dev/null.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// CMD does not write a start code on fd 3: count a successful exec as `O`.
    #[arg(long)]
    no_start_fd: bool,
    /// Leave it in this pid namespace (its pid must then be free wherever it is restored:
    /// what haul's pre-flight checks; for tests of that check only).
    #[arg(long)]
    no_pidns: bool,
    /// Seconds to wait for the start code (the workload is killed after that).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    timeout: u64,
    /// The workload and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    cmd: Vec<OsString>,
}

fn write_pidfile(path: &PathBuf, pid: i32) -> std::io::Result<()> {
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut cmd = args.cmd.into_iter();
    let program = cmd.next().expect("clap requires CMD");
    let mut spec = LaunchSpec::new(program)
        .args(cmd)
        .cwd(&args.cwd)
        .start_timeout(Duration::from_secs(args.timeout));
    if let Some(ns) = args.netns {
        spec = spec.netns(ns);
    }
    if let Some(m) = args.mntns {
        spec = spec.mntns(m);
    }
    if let Some(out) = args.output {
        spec = spec.output(out);
    }
    if args.no_start_fd {
        spec = spec.protocol(StartProtocol::Exec);
    }
    if args.no_pidns {
        spec = spec.in_callers_pid_namespace();
    }
    let launched = match launch(&spec) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("haul-launch: {e}");
            return ExitCode::from(2);
        }
    };
    println!("{}", launched.report_line());
    if let Some(pidfile) = &args.pidfile {
        if let Err(e) = write_pidfile(pidfile, launched.host_pid) {
            eprintln!(
                "haul-launch: cannot write pid file {}: {e}",
                pidfile.display()
            );
            return ExitCode::from(2);
        }
    }
    if launched.started() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
