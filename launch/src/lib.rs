//! haul-launch: starting a workload the way CRIU can checkpoint it (the `haul-launch`
//! program, and the library under it that haul's tests and harness call).
//!
//! CRIU dumps a process tree only when nothing in it leads outside: the workload must be the
//! init (pid 1) of its own pid namespace, so that its pids can be restored on a node where
//! they are taken, and the leader of its own session, so that its session is inside the
//! tree; it must hold no fd inherited from whoever started it. [`launch`] does what
//! `setsid unshare --pid --fork -- setsid CMD` does, optionally inside a network namespace
//! (what `nsenter --net=/run/netns/NAME` does, never `ip netns exec`, which also makes a mount
//! namespace CRIU then refuses), optionally inside an existing mount namespace (a node's own
//! disks when two nodes share one machine; `haul pid` then runs there too), never a new one:
//!
//! ```text
//! caller ── fork ─▶ reaper                    host pid namespace, comm "haul-reaper"
//!                    setsid()                 its own session, no controlling terminal
//!                    setns(MNT, NEWNS)        optional: a node's own view of the files
//!                                             (/dev/null and the output reopened there)
//!                    setns(NAME, NEWNET)      optional: /run/netns/NAME
//!                    unshare(CLONE_NEWPID)    its children go into a new pid namespace
//!                    fork ─▶ init             pid 1 there; its host pid is reported
//!                    │        setsid()        session leader inside the dumped tree
//!                    │        chdir(cwd); stdin /dev/null, stdout+stderr /dev/null or a file
//!                    │        fd 3 = start pipe (optional), every other fd closed
//!                    │        signal mask and dispositions reset; execve(program)
//!                    waitpid(init), then exits the way the init did
//! ```
//!
//! **The reaper stays**, as the `unshare --fork` parent of the acceptance launcher does: it
//! holds no fd (stdio on /dev/null, all others closed), sits in the host pid namespace outside
//! the dumped tree (CRIU dumps the tree rooted at the init and does not care about its
//! parent), and reaps the init when it ends (also when CRIU kills it at the end of a
//! migration), exiting with the init's status, so the caller of [`launch`] learns how the
//! workload ended with [`Launched::wait_timeout`]. When the caller exits first (the
//! `haul-launch` program does, right after printing the pid), the reaper is reparented to the
//! host's init or subreaper and goes on reaping. The workload on the destination node, once
//! restored by `criu restore -d`, is a child of the host's init there.
//!
//! The start code: with [`StartProtocol::StartFd`] the init gets the write end of a pipe as
//! fd 3, named by `HAUL_START_FD=3` ([`crate::start_code`]); the workload writes one byte
//! (`O`, `L`, `M`) and closes it, so no fd outside the tree remains when it is dumped. With
//! [`StartProtocol::Exec`] (programs that know nothing of it, e.g. redis-server) the code is
//! `O` as soon as `execve` succeeded.
//!
//! Everything between `fork` and `execve` is async-signal-safe (plain system calls on data
//! prepared before the fork): the caller may be multi-threaded, as a test harness is.
//!
//! | module | concern | side of the fork |
//! |---|---|---|
//! | [`spec`] | [`LaunchSpec`], [`StartProtocol`]: what the caller asks for | caller |
//! | `plan` | resolving the program, argv/envp as C strings, the fds moved high, the pipes (may allocate; nix) | caller, before |
//! | `child` | the reaper and the init: raw libc calls on the prepared plan, nothing else | children, after |
//! | [`status`] | the status pipe: fixed-size reports from the children, decoded by the caller | both |
//! | [`start_code`] | the one-byte start report the workload sends on fd 3, and its sender [`StartReporter`] | workload |
//! | `launched` | [`launch`], [`Launched`], [`WorkloadExit`]: reading the pipes, waiting, killing (nix) | caller, after |
//! | [`error`] | [`LaunchError`] | caller |

mod child;
pub mod error;
mod launched;
mod plan;
mod read;
pub mod spec;
pub mod start_code;
pub mod status;

pub use error::LaunchError;
pub use launched::{launch, Launched, WorkloadExit};
pub use spec::{LaunchSpec, StartProtocol, NETNS_DIR};
pub use start_code::{StartCode, StartReporter};
pub use status::Stage;
