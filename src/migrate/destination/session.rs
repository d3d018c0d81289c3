//! One migration on the destination: its states as a type, one step function, one receive
//! point.
//!
//! [`run`] reads each command (bounded by [`limits::IDLE`]), hands it with the current
//! [`State`] to [`step`], sends the reply that comes back, and on any failure tells the
//! source why (with the error's wire kind) and closes whatever the state still holds:
//! page servers are killed, a held copy is discarded (CRIU kills it), a lazy-pages daemon
//! that serves nobody is stopped.

use std::sync::Arc;

use tracing::{info, warn};

use crate::fault::{self, Phase};
use crate::wire::pb::{self, message::Body};

use super::super::control::{Control, Stream};
use super::super::limits;
use super::error::ServeError;
use super::prepare::{self, Prepared};
use super::probe;
use super::restore::{self, Gated, Held, Running};
use super::Service;

/// Where one migration is, each state owning what it has started.
pub enum State {
    /// Authenticated; waiting for `Begin`.
    Connected,
    /// `Begin` passed the checks: image directory, receivers, page servers per round.
    Prepared(Prepared),
    /// A dry run's `Begin` passed the checks: only a `Probe` and `Finish` may follow, and
    /// nothing is kept.
    DryRun(Prepared),
    /// Over haul's memory path: the restore started early and waits at its first image read
    /// while the final dump's images arrive, until `ImagesDone`.
    Gated(Prepared, Gated),
    /// Restored, held at `post-restore` until the source says `Resume`.
    Held(Held),
    /// The process runs here (post-copy: its pages may still be coming).
    Running(Running),
}

impl State {
    /// The state's name, as errors and the module's diagram say it.
    pub fn name(&self) -> &'static str {
        match self {
            State::Connected => "Connected",
            State::Prepared(_) => "Prepared",
            State::DryRun(_) => "DryRun",
            State::Gated(..) => "Gated",
            State::Held(_) => "Held",
            State::Running(_) => "Running",
        }
    }

    /// Stops what the state still holds: page servers, a held copy (CRIU kills it), a
    /// lazy-pages daemon that serves nobody. A running copy's daemon is left to finish.
    pub async fn close(self, service: &Service, why: &str) {
        let id = match self {
            State::Connected => return,
            State::Prepared(mut p) => {
                p.stop_page_servers().await;
                super::sync::rollback(std::mem::take(&mut p.sync), why).await;
                p.id
            }
            State::DryRun(p) => {
                let _ = std::fs::remove_dir_all(p.dir.root());
                p.id
            }
            State::Gated(mut p, g) => {
                g.abandon().await;
                p.stop_page_servers().await;
                p.id
            }
            State::Held(h) => {
                let id = h.id.clone();
                h.discard(why).await;
                id
            }
            State::Running(mut r) => {
                if let Some(l) = r.lazy.take() {
                    l.detach().await;
                }
                // the process runs here on these files, whatever ended the session
                super::sync::commit(std::mem::take(&mut r.sync)).await;
                r.id
            }
        };
        service.channels.forget(&id);
    }
}

/// What one command led to.
pub enum Transition {
    /// Go on in this state, answering with the body (if any).
    To(State, Option<Body>),
    /// The migration is over (the source said `Finish`): answer `Finished`, close the state.
    Finished(State),
}

/// A failed command, with the state to close.
pub struct Failed {
    /// What the state was when the command failed (what it holds is to be closed).
    pub state: State,
    /// Why.
    pub error: ServeError,
}

fn fail(state: State, error: impl Into<ServeError>) -> Failed {
    Failed {
        state,
        error: error.into(),
    }
}

/// The error for a command that is not valid in `state`.
pub fn invalid_command(state: State, got: &Body) -> Failed {
    let e = ServeError::InvalidCommand {
        state: state.name(),
        got: pb::Message::of(got.clone()).kind_name(),
    };
    fail(state, e)
}

/// One command in one state.
pub async fn step(
    service: &Arc<Service>,
    peer: &str,
    state: State,
    msg: Body,
) -> Result<Transition, Failed> {
    match (state, msg) {
        (state, Body::Finish(f)) => {
            if f.ok {
                info!("{peer}: migration finished");
            } else {
                warn!("{peer}: migration abandoned by the source: {}", f.reason);
            }
            Ok(Transition::Finished(state))
        }
        (State::Connected, Body::Begin(b)) => match prepare::prepare(service, b, peer).await {
            Ok((prepared, ready)) if prepared.dry_run => {
                Ok(Transition::To(State::DryRun(prepared), Some(ready.into())))
            }
            Ok((prepared, ready)) => Ok(Transition::To(
                State::Prepared(prepared),
                Some(ready.into()),
            )),
            Err(e) => Err(fail(State::Connected, e)),
        },
        (State::Prepared(p), Body::Probe(_)) => match probe::receive(service, &p.id).await {
            Ok(done) => Ok(Transition::To(State::Prepared(p), Some(done.into()))),
            Err(e) => Err(fail(State::Prepared(p), e)),
        },
        (State::DryRun(p), Body::Probe(_)) => match probe::receive(service, &p.id).await {
            Ok(done) => Ok(Transition::To(State::DryRun(p), Some(done.into()))),
            Err(e) => Err(fail(State::DryRun(p), e)),
        },
        (State::Prepared(mut p), Body::StartPageServer(s)) => {
            match p.start_page_server(service, s.round).await {
                Ok(()) => Ok(Transition::To(
                    State::Prepared(p),
                    Some(pb::PageServerStarted { round: s.round }.into()),
                )),
                Err(e) => Err(fail(State::Prepared(p), e)),
            }
        }
        (State::Prepared(mut p), Body::EndPageServer(e)) => {
            match p.end_page_server(e.round).await {
                Ok(ended) => Ok(Transition::To(State::Prepared(p), Some(ended.into()))),
                Err(err) => Err(fail(State::Prepared(p), err)),
            }
        }
        (State::Prepared(mut p), Body::ImageChunk(c)) => {
            if c.round == 0 {
                fault::point(Phase::ImageTransfer).await;
            }
            match p.receive(&c) {
                Ok(()) => Ok(Transition::To(State::Prepared(p), None)),
                Err(e) => Err(fail(State::Prepared(p), e)),
            }
        }
        (State::Prepared(mut p), body) if super::sync::is_sync(&body) => {
            let img_dir = p.dir.root().to_path_buf();
            match super::sync::step(service, &mut p.sync, &p.id, &img_dir, body).await {
                Ok(reply) => Ok(Transition::To(State::Prepared(p), reply)),
                Err(e) => Err(fail(State::Prepared(p), e)),
            }
        }
        (State::Prepared(mut p), Body::Restore(r)) if r.early => {
            // reaches the restore phase once its images are all here (Gated::open)
            match restore::gate(service, &mut p, r).await {
                Ok(g) => Ok(Transition::To(State::Gated(p, g), None)),
                Err(e) => Err(fail(State::Prepared(p), e)),
            }
        }
        // The final sync round comes while the source is frozen, after the early restore
        // started: CRIU waits at its gate and opens no file before ImagesDone.
        (State::Gated(mut p, g), body) if super::sync::is_sync(&body) => {
            let img_dir = p.dir.root().to_path_buf();
            match super::sync::step(service, &mut p.sync, &p.id, &img_dir, body).await {
                Ok(reply) => Ok(Transition::To(State::Gated(p, g), reply)),
                Err(e) => Err(fail(State::Gated(p, g), e)),
            }
        }
        (State::Gated(mut p, mut g), Body::ImageChunk(c)) => {
            if c.round == 0 {
                fault::point(Phase::ImageTransfer).await;
            }
            match g.receive(&mut p, &c) {
                Ok(()) => Ok(Transition::To(State::Gated(p, g), None)),
                Err(e) => Err(fail(State::Gated(p, g), e)),
            }
        }
        (State::Gated(mut p, g), Body::ImagesDone(_)) => {
            // the synced trees in place (since the final round) before CRIU opens the files
            if let Err(e) = super::sync::install(&mut p.sync).await {
                return Err(fail(State::Gated(p, g), e));
            }
            match g.open(&mut p).await {
                Ok(held) => {
                    let reply = pb::RestoreHeld { pid: held.pid };
                    Ok(Transition::To(State::Held(held), Some(reply.into())))
                }
                Err(e) => Err(fail(State::Prepared(p), e)),
            }
        }
        (State::Prepared(mut p), Body::Restore(r)) => {
            fault::point(Phase::Restore).await;
            // the synced trees in place (since the final round) before CRIU opens the files
            if let Err(e) = super::sync::install(&mut p.sync).await {
                return Err(fail(State::Prepared(p), e));
            }
            match restore::restore(service, &mut p, r).await {
                Ok(held) => {
                    let reply = pb::RestoreHeld { pid: held.pid };
                    Ok(Transition::To(State::Held(held), Some(reply.into())))
                }
                Err(e) => Err(fail(State::Prepared(p), e)),
            }
        }
        (State::Held(held), Body::Resume(_)) => match held.resume().await {
            Ok((running, restored)) => Ok(Transition::To(
                State::Running(running),
                Some(restored.into()),
            )),
            // The restore's own clean-up is done: nothing is left to close.
            Err(e) => Err(fail(State::Connected, e)),
        },
        (State::Running(mut r), Body::LazyDone(_)) => {
            let (ok, detail) = match r.lazy.take() {
                Some(l) => l.wait().await,
                None => (false, "no lazy-pages daemon ran".into()),
            };
            Ok(Transition::To(
                State::Running(r),
                Some(pb::LazyFinished { ok, detail }.into()),
            ))
        }
        (state, other) => Err(invalid_command(state, &other)),
    }
}

/// Runs one migration's session on an authenticated control connection until the source
/// finishes it or it fails; on failure tells the source why. Whatever it started is stopped
/// (or, for a running copy, left to finish) before it returns.
pub async fn run<S: Stream>(service: Arc<Service>, ctl: &mut Control<S>) -> Result<(), ServeError> {
    let peer = ctl.peer().to_string();
    let mut state = State::Connected;
    loop {
        let msg = match ctl.recv(limits::IDLE).await {
            Ok(m) => m,
            Err(e) => return Err(abort(&service, ctl, state, e.into()).await),
        };
        match step(&service, &peer, state, msg).await {
            Ok(Transition::To(next, reply)) => {
                state = next;
                if let Some(reply) = reply {
                    let round_started = match &reply {
                        Body::PageServerStarted(s) => Some(s.round),
                        _ => None,
                    };
                    if let Err(e) = ctl.send(reply).await {
                        return Err(abort(&service, ctl, state, e.into()).await);
                    }
                    // Pages stream once the source has this answer: a fault injected here
                    // hits a running dump.
                    match round_started {
                        Some(0) => fault::point(Phase::FinalDump).await,
                        Some(_) => fault::point(Phase::PreCopyRound).await,
                        None => {}
                    }
                }
            }
            Ok(Transition::Finished(last)) => {
                let sent = ctl.send(pb::Finished {}).await;
                last.close(&service, "the migration is over").await;
                return sent.map_err(ServeError::from);
            }
            Err(Failed { state, error }) => return Err(abort(&service, ctl, state, error).await),
        }
    }
}

/// Tells the source why (best effort: the connection may be what failed) and closes `state`.
async fn abort<S: Stream>(
    service: &Service,
    ctl: &mut Control<S>,
    state: State,
    error: ServeError,
) -> ServeError {
    let wire = error.to_wire();
    let why = wire.message.clone();
    ctl.send_error(wire).await;
    state.close(service, &why).await;
    error
}
