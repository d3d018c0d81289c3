//! The `haul` command: `keygen`, `serve`, `pid`, `check`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use haul::criu::options::PreDumpMode;
use haul::criu::{Criu, MIN_CRIU_VERSION};
use haul::migrate::converge::ThrottleSetting;
use haul::migrate::destination::{self, ServeConfig};
use haul::migrate::source::{self, SourceConfig};
use haul::migrate::{Strategy, DEFAULT_IMG_PATH};
use haul::wire::Key;

/// The port `haul serve` listens on, and `haul pid` connects to, when none is given.
const DEFAULT_PORT: u16 = 27500;

/// Live-migrate a Linux process tree to another machine, through CRIU.
///
/// On the destination: `haul serve --listen ADDR:PORT --key KEY`.
/// On the source:      `haul pid PID ADDR:PORT --key KEY`.
/// Both sides need the same key file (`haul keygen KEY`, then copy it over a secure channel),
/// CRIU >= 4.1 and root.
#[derive(Parser)]
#[command(name = "haul", version, about, long_about)]
struct Cli {
    /// Log level for haul's own messages (error, warn, info, debug, trace); also HAUL_LOG.
    #[arg(long, global = true, default_value = "info", env = "HAUL_LOG")]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a new shared key file (mode 0600); copy it to the other node.
    Keygen {
        /// Where to write it (refuses to overwrite).
        file: PathBuf,
    },
    /// Receive migrations (the destination node). Serves one after another until stopped.
    Serve {
        /// Address and port to listen on.
        #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
        listen: SocketAddr,
        /// The shared key file.
        #[arg(long)]
        key: PathBuf,
        /// Where images and CRIU logs go, one directory per migration.
        #[arg(long, default_value = DEFAULT_IMG_PATH)]
        img_path: PathBuf,
        /// Exit after this many migrations (default: serve until killed).
        #[arg(long)]
        max_migrations: Option<usize>,
        /// File sync (`haul pid --sync`): accept synced trees only within this directory
        /// (repeatable; default: anywhere but `/`, the image path and the system's own
        /// directories /bin /boot /dev /etc /lib* /proc /run /sbin /sys /usr).
        #[arg(long, value_name = "DIR")]
        sync_allow: Vec<PathBuf>,
        /// File sync: keep a failed migration's partial copy (the staging directory
        /// `.haul-sync.<migration-id>` in each synced tree) for inspection instead of removing
        /// it. The trees themselves always get back what they held.
        #[arg(long)]
        keep_partial_sync: bool,
        /// (testing) Write synced trees below this directory instead of `/`: two "nodes" on
        /// one file system.
        #[arg(long, hide = true, value_name = "DIR")]
        sync_root_prefix: Option<PathBuf>,
    },
    /// Migrate the process tree rooted at PID to the destination (the source node).
    Pid {
        /// The root of the tree to migrate.
        pid: i32,
        /// The destination's `haul serve`: HOST:PORT, or HOST for port 27500.
        destination: String,
        /// The shared key file.
        #[arg(long)]
        key: PathBuf,
        /// How memory moves: stop-copy, pre-copy, post-copy, hybrid, or auto: the one with the
        /// lowest estimated downtime on these nodes (from the tree's resident and mapped
        /// memory, the memory channel's measured bandwidth and each strategy's known costs;
        /// a strategy without a post-copy window when the difference is small), within
        /// --max-downtime when given. The report and --dry-run show every estimate.
        #[arg(long, default_value = "auto")]
        strategy: Strategy,
        /// Check both nodes and estimate, freezing nothing: prints every problem pre-flight
        /// finds on either node, the strategy it would use and its estimated downtime and
        /// total time. Exits 0 when the migration could go ahead, 3 when it would be refused.
        #[arg(long)]
        dry_run: bool,
        /// Where this node keeps images and CRIU logs, one directory per migration.
        #[arg(long, default_value = DEFAULT_IMG_PATH)]
        img_path: PathBuf,
        /// Write the JSON report here too.
        #[arg(long)]
        report: Option<PathBuf>,
        /// The tree has established TCP connections to keep (CRIU's TCP repair).
        #[arg(long)]
        tcp_established: bool,
        /// The tree is a shell job (its session leader is outside it).
        #[arg(long)]
        shell_job: bool,
        /// The tree holds file locks (pre-flight turns this on by itself when it sees locks).
        #[arg(long)]
        file_locks: bool,
        /// Deleted-but-open files up to this size travel in the images (CRIU's --ghost-limit;
        /// e.g. 512m). Pre-flight sets a limit that fits the deleted files it finds, up to 256m.
        #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
        ghost_limit: Option<u64>,
        /// Reconnect unix datagram sockets whose peer is outside the tree by the peer's name
        /// (CRIU's --ext-unix-sk; a stream connection to the outside cannot be migrated).
        #[arg(long)]
        ext_unix_sk: bool,
        /// Deleted files still linked elsewhere are linked back instead of copied (CRIU's
        /// --link-remap; pre-flight turns it on by itself when it sees one).
        #[arg(long)]
        link_remap: bool,
        /// Go on even when pre-flight refuses (CRIU then fails on the problem, and haul says
        /// why from CRIU's log). For when pre-flight is wrong.
        #[arg(long)]
        ignore_preflight: bool,
        /// Pre-copy: at most this many pre-dump rounds. Rounds also stop when one writes 64
        /// pages or fewer, when the dirty set grows by more than 10 %, and (without
        /// --max-downtime) when it shrinks by less than 10 %.
        #[arg(long, default_value_t = 8)]
        max_rounds: u32,
        /// Pre-copy: stop the rounds as soon as the estimated downtime (dirty pages of the last
        /// round / measured bandwidth) is within this many milliseconds.
        #[arg(long, value_name = "MS")]
        max_downtime: Option<u64>,
        /// Pre-copy: when --max-downtime is never met within --max-rounds, `cancel` (nothing is
        /// frozen, the process stays on the source) or `proceed` (final dump anyway).
        #[arg(long, default_value = "proceed")]
        on_timeout: haul::migrate::converge::OnTimeout,
        /// Pre-copy: slow the tree (a CPU quota, else freezing it part of each 100 ms, in a
        /// cgroup of haul's for the migration) so that the rounds reach --max-downtime, as QEMU's
        /// auto-converge does: `auto` (up to 99 %, only as far as the target needs), `off`, or
        /// the highest level allowed (`60%`). Only toward a --max-downtime target; released
        /// before the final dump and on every failure.
        #[arg(long, default_value = "auto", value_name = "off|auto|MAX%")]
        throttle: ThrottleSetting,
        /// Pre-copy: how pre-dumps copy memory: `splice` (CRIU's parasite, while the tree is
        /// frozen; the default) or `read` (process_vm_readv, after it resumes). `read` was
        /// slower in the VMs and is refused with CRIU <= 4.2.1, whose read pre-dumps through a
        /// page server restore a broken process (results/vm/throttle-2026-11-30/).
        #[arg(long, value_name = "splice|read")]
        pre_dump_mode: Option<PreDumpMode>,
        /// No progress bar.
        #[arg(long)]
        no_progress: bool,
        /// How memory moves after the freeze: `auto` (haul's own memory path for post-copy
        /// and hybrid, and for stop-copy where it is estimated faster: pages pushed at link
        /// speed, faulted pages first; not for a sparse tree, whose lazy dump costs with its
        /// mapped size), `haul` (stop-copy too, whatever the estimate), or `criu` (CRIU's
        /// page server, and its lazy-pages daemon for post-copy). haul's path needs lazy pages
        /// on both nodes; stop-copy of a tree with established TCP connections always keeps
        /// CRIU's page-server dump (a failed lazy dump would leave them locked).
        #[arg(long, default_value = "auto", value_parser = ["auto", "haul", "criu"])]
        memory_path: String,
        /// Bulk memory streams of haul's memory path (besides its priority stream), 1 to 16.
        #[arg(long, default_value_t = haul::memory::source_path::DEFAULT_STREAMS)]
        memory_streams: u32,
        /// haul's memory path reads the frozen tasks' memory itself instead of splicing CRIU's
        /// lazy page server's answers.
        #[arg(long)]
        no_criu_splice: bool,
        /// Copy this directory tree to the same path on the destination (repeatable), for
        /// nodes that do not share the storage the process works on: in rounds while it runs,
        /// then once more while it is frozen (only what changed). Default: none (the tree's
        /// files are on storage both nodes see).
        #[arg(long, value_name = "PATH")]
        sync: Vec<PathBuf>,
        /// File sync: at most this many rounds while the process runs.
        #[arg(long, default_value_t = 8, value_name = "N")]
        sync_max_rounds: u32,
        /// File sync: freeze for the final round once a round moved at most this many bytes
        /// (k/m/g suffixes allowed).
        #[arg(long, default_value = "4m", value_name = "BYTES", value_parser = parse_bytes)]
        sync_target: u64,
        /// File sync: copy symlinks that point out of a synced tree as they are (refused by
        /// default: the destination may not have what they point to).
        #[arg(long)]
        sync_any_symlink: bool,
    },
    /// Show the CRIU version and the kernel features that decide which strategies can run.
    Check {
        /// Print it as JSON (haul's `NodeCheck`: CRIU, features, strategies, cost model,
        /// problems).
        #[arg(long)]
        json: bool,
    },
    /// (internal) The destination's post-copy relay, started by `haul serve` on two
    /// inherited sockets so that it outlives the service.
    #[command(hide = true)]
    LazyRelay {
        /// The lazy-pages daemon's connection.
        #[arg(long)]
        local_fd: i32,
        /// The memory channel from the source.
        #[arg(long)]
        remote_fd: i32,
        /// Where `haul serve` writes the restored tree's root pid.
        #[arg(long)]
        tree_pid_file: PathBuf,
    },
    /// (internal) The destination's lazy-pages engine (haul's memory path), started by
    /// `haul serve` on inherited fds so that it outlives the service.
    #[command(hide = true)]
    LazyEngine {
        /// The final dump's images on this node.
        #[arg(long)]
        dir: PathBuf,
        /// The listening lazy-pages socket.
        #[arg(long)]
        listen_fd: i32,
        /// The priority memory stream.
        #[arg(long)]
        priority_fd: i32,
        /// The bulk memory streams.
        #[arg(long)]
        bulk_fd: Vec<i32>,
        /// Where to report progress (lines).
        #[arg(long)]
        status_fd: i32,
        /// Where `haul serve` writes the restored tree's root pid.
        #[arg(long)]
        tree_pid_file: PathBuf,
        /// Stop-and-copy: the copy is held until every page is in (bulk at once).
        #[arg(long)]
        hold: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    if let Cmd::LazyEngine { .. } = cli.cmd {
        // plain threads, no async runtime
        return lazy_engine(cli.cmd);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("haul: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.cmd)) {
        Ok(code) => code,
        Err(e) => {
            // The whole cause chain, each level once ("what: why: why").
            eprintln!("haul: {}", haul::migrate::error::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Keygen { file } => {
            Key::generate().write_new(&file)?;
            println!(
                "wrote a new key to {} (mode 0600); copy it to the other node",
                file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Serve {
            listen,
            key,
            img_path,
            max_migrations,
            sync_allow,
            keep_partial_sync,
            sync_root_prefix,
        } => {
            let key = Key::load(&key)?;
            let criu = Criu::locate_checked().await?.0;
            let listener = destination::bind(listen).await?;
            destination::serve(
                listener,
                ServeConfig {
                    listen,
                    key,
                    img_path,
                    criu,
                    max_migrations,
                    sync: destination::sync::SyncServeOptions {
                        allow: sync_allow,
                        keep_partial: keep_partial_sync,
                        root_prefix: sync_root_prefix,
                    },
                },
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Pid {
            pid,
            destination,
            key,
            strategy,
            img_path,
            report,
            tcp_established,
            shell_job,
            file_locks,
            ghost_limit,
            ext_unix_sk,
            link_remap,
            ignore_preflight,
            dry_run,
            memory_path,
            memory_streams,
            no_criu_splice,
            max_rounds,
            max_downtime,
            on_timeout,
            throttle,
            pre_dump_mode,
            no_progress,
            sync,
            sync_max_rounds,
            sync_target,
            sync_any_symlink,
        } => {
            if let (ThrottleSetting::UpTo(cap), None) = (throttle, max_downtime) {
                anyhow::bail!(
                    "--throttle {cap} needs --max-downtime MS, the downtime the throttle works toward (QEMU's default is 300)"
                );
            }
            let key = Key::load(&key)?;
            let destination = if destination.contains(':') {
                destination
            } else {
                format!("{destination}:{DEFAULT_PORT}")
            };
            let cfg = SourceConfig {
                pid,
                destination,
                key,
                img_path,
                strategy,
                tree: haul::criu::options::TreeOptions {
                    tcp_established,
                    shell_job,
                    file_locks,
                    link_remap,
                    ext_unix_sk,
                },
                ghost_limit,
                dry_run,
                ignore_preflight,
                convergence: haul::migrate::converge::Convergence {
                    max_rounds,
                    max_downtime_secs: max_downtime.map(|ms| ms as f64 / 1000.0),
                    on_timeout,
                    ..Default::default()
                },
                throttle,
                pre_dump_mode,
                progress: !no_progress,
                memory: haul::memory::MemoryPath {
                    engine: memory_path != "criu",
                    forced: memory_path == "haul",
                    streams: memory_streams,
                    via_criu: !no_criu_splice,
                },
                sync: source::sync::SyncOptions {
                    paths: sync,
                    policy: haul::sync::RoundPolicy {
                        max_rounds: sync_max_rounds,
                        target_bytes: sync_target,
                        ..Default::default()
                    },
                    symlinks: if sync_any_symlink {
                        haul::sync::SymlinkPolicy::Any
                    } else {
                        haul::sync::SymlinkPolicy::WithinTree
                    },
                },
            };
            // SourceFailure's message is the whole chain and where the process is. A signal
            // drops the migration: a throttle it holds is released on the way out, and CRIU
            // resumes a tree it froze once its socket closes (as when haul pid is killed).
            let rep = tokio::select! {
                r = source::migrate(cfg) => r.map_err(|f| anyhow::anyhow!("{f}"))?,
                sig = interrupted() => anyhow::bail!(
                    "stopped by {sig}: a throttle haul held was released (pid {pid} runs at full speed in its own cgroups); CRIU resumes a tree it had frozen, unless the destination already runs it (check both nodes)"
                ),
            };
            let mut code = ExitCode::SUCCESS;
            match &rep.preflight {
                Some(p) if rep.dry_run => {
                    print!("{}", p.summary());
                    if p.refused {
                        code = ExitCode::from(3);
                    }
                }
                _ => print!("{}", rep.summary()),
            }
            for w in &rep.warnings {
                eprintln!("haul: warning: {w}");
            }
            if let Some(path) = report {
                let json = serde_json::to_vec_pretty(&rep)?;
                std::fs::write(&path, json)
                    .with_context(|| format!("cannot write the report to {}", path.display()))?;
            }
            Ok(code)
        }
        Cmd::Check { json } => check(json).await.map(|()| ExitCode::SUCCESS),
        Cmd::LazyEngine { .. } => anyhow::bail!("lazy-engine runs outside the async runtime"),
        Cmd::LazyRelay {
            local_fd,
            remote_fd,
            tree_pid_file,
        } => {
            let local = inherited_socket(local_fd)?;
            let remote = inherited_socket(remote_fd)?;
            let (up, down) = haul::migrate::relay::destination_relay(local, remote, &tree_pid_file)
                .await
                .context("lazy relay")?;
            tracing::info!("lazy relay done: {up} bytes to the source, {down} from it");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `haul lazy-engine`: runs haul's memory engine on the fds `haul serve` handed over.
fn lazy_engine(cmd: Cmd) -> ExitCode {
    let Cmd::LazyEngine {
        dir,
        listen_fd,
        priority_fd,
        bulk_fd,
        status_fd,
        tree_pid_file,
        hold,
    } = cmd
    else {
        return ExitCode::FAILURE;
    };
    use std::os::fd::{FromRawFd, OwnedFd};
    let take = |fd: i32, what: &str| -> anyhow::Result<OwnedFd> {
        // SAFETY: fcntl(F_GETFD) on any int is harmless.
        if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            anyhow::bail!("{what} fd {fd} is not an inherited fd");
        }
        // SAFETY: open (checked above), and inherited for this command alone.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let cfg = (|| -> anyhow::Result<haul::memory::engine::EngineConfig> {
        Ok(haul::memory::engine::EngineConfig {
            dir,
            listener: take(listen_fd, "lazy-pages socket")?.into(),
            priority: take(priority_fd, "priority stream")?.into(),
            bulk: bulk_fd
                .iter()
                .map(|&fd| take(fd, "bulk stream").map(Into::into))
                .collect::<anyhow::Result<_>>()?,
            status: Some(take(status_fd, "status pipe")?),
            tree_pid_file,
            hold,
        })
    })();
    let result = cfg.and_then(|cfg| Ok(haul::memory::engine::run(cfg)?));
    match result {
        Ok(r) => {
            tracing::info!("lazy engine done: {r:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "haul lazy-engine: {}",
                haul::migrate::error::chain(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

/// The first SIGINT, SIGTERM or SIGHUP, by name (never, where none can be caught).
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

/// A TCP socket inherited from `haul serve` as fd `fd`.
fn inherited_socket(fd: i32) -> anyhow::Result<tokio::net::TcpStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: fstat(2) on any int is harmless; `st` is plain data it fills in.
    let is_socket = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
    };
    if fd < 3 || !is_socket {
        anyhow::bail!("fd {fd} is not an inherited socket");
    }
    // SAFETY: fd is open, a socket, and not used by anything else in this process: it was
    // inherited for this command alone.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let std = std::net::TcpStream::from(owned);
    std.set_nonblocking(true)
        .with_context(|| format!("fd {fd}"))?;
    tokio::net::TcpStream::from_std(std).with_context(|| format!("fd {fd}"))
}

/// A size with an optional k/m/g/t suffix (powers of 1024), as `--ghost-limit` and
/// `--sync-target` take it.
fn parse_bytes(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{s:?} is not a size (like 4096, 512k, 64m, 1g): {e}"))
}

async fn check(json: bool) -> anyhow::Result<()> {
    if json {
        let criu = Criu::locate()?;
        let node = haul::preflight::node::check_node(&criu).await;
        println!("{}", serde_json::to_string_pretty(&node)?);
        return Ok(());
    }
    let criu = Criu::locate()?;
    let v = criu
        .version()
        .await
        .with_context(|| format!("{} does not answer", criu.path().display()))?;
    println!("CRIU version {v} at {}", criu.path().display());
    if (v.major, v.minor) < MIN_CRIU_VERSION {
        anyhow::bail!(
            "CRIU {v} is too old: haul needs >= {}.{} (scripts/setup.sh builds one)",
            MIN_CRIU_VERSION.0,
            MIN_CRIU_VERSION.1
        );
    }
    let check = criu.check().await;
    match &check {
        Ok(()) => println!("criu check: looks good"),
        Err(e) => println!("criu check: FAILED: {e}"),
    }
    let f = criu.features().await?;
    let yn = |b: bool| if b { "yes" } else { "no" };
    println!(
        "memory tracking (mem_track, soft-dirty): {}",
        yn(f.mem_track)
    );
    println!(
        "lazy pages (userfaultfd):                {}",
        yn(f.lazy_pages)
    );
    if let Some(thp) = haul::migrate::tree::thp_mode() {
        println!("transparent huge pages:                  {thp}");
    }
    println!("strategies on this node (as source and destination):");
    for s in [
        Strategy::StopCopy,
        Strategy::PreCopy,
        Strategy::PostCopy,
        Strategy::Hybrid,
    ] {
        match s.missing(f, f) {
            None => println!("  {:<10} available", s.name()),
            Some(why) => println!("  {:<10} unavailable: needs {why}", s.name()),
        }
    }
    let (auto, why) = Strategy::Auto.resolve(f, f);
    println!("  auto       -> {auto} for a typical tree: {why} (each migration decides by estimated cost: see `haul pid --dry-run`)");
    Ok(check?)
}
