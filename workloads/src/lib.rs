//! Workloads that haul migrates, and the pieces a harness needs to drive and judge them.
//!
//! A workload that only runs proves nothing: each program in `src/bin/` checks itself once it
//! is told to stop (a stop file appears in its working directory, which lives on the directory
//! both nodes share), writes its verdict to a log next to it, and exits 0 only when nothing
//! was lost. This library holds what the programs share and what a test on another node calls
//! to check a migrated workload:
//!
//! | module | concern |
//! |---|---|
//! | [`worklog`] | the line-oriented log every workload writes (one `write(2)` per line) and its analysis |
//! | [`mtouch_log`] | the memory toucher's verdict: touches, `Mismatch` lines, largest pause between touches |
//! | [`mtouch_spec`] | `SIZE:PRE:PAUSE`, touch patterns and dirty rates of the memory toucher |
//! | [`churn`] | the file set `file-churn` rewrites and appends to, and its verifier |
//! | [`records`] | the checksummed record file that `rec-writer` appends to, and its verifier |
//! | [`tcp_proto`] | the request/reply frames between `tcp-client` and `tcp-echo` |
//! | [`stop`] | stop files: how a harness tells a workload to check itself and exit |
//! | [`holder`] | the probe-until-stop loop of the programs that hold a resource CRIU has trouble with (issue #13) |
//! | [`files`] | default file names the workloads use in their working directory |
//! | [`rate_log`] | the memory toucher's dirty-rate log, one line per second (`mtouch --rate-log`) |
//! | [`procfs`] | reading and damaging a running workload through `/proc` (tests) |
//!
//! Launching them (pid 1 of a new pid namespace, own session, no inherited fds) and the
//! one-byte start report they send their launcher live in the `haul-launch` crate
//! (`haul_launch::launch`, `haul_launch::start_code`).
//!
//! The programs: `mtouch` (P.Haul's memory toucher, with dirty
//! rates and patterns), `mt-threads` (threads with verifiable memory), `ptree` (a process tree
//! with a zombie), `tcp-echo` and `tcp-client` (a connection that must survive migration) and
//! `rec-writer` (appends checksummed records to a shared file), `file-churn` (keeps rewriting and
//! appending to ~200 MiB of files in its working directory, for migrations without shared
//! storage), and `redis-load` (a client that
//! loads redis-server with a known data set, keeps writing through a migration, then checks
//! every key).

pub mod churn;
pub mod files;
pub mod holder;
pub mod mtouch_log;
pub mod mtouch_spec;
pub mod procfs;
pub mod rate_log;
pub mod records;
pub mod stop;
pub mod tcp_proto;
pub mod worklog;
