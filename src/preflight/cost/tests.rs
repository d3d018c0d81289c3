use super::*;
use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest};
use proptest::strategy::Strategy as _;

const MIB: u64 = 1 << 20;
const NONE: Features = Features {
    mem_track: false,
    lazy_pages: false,
};
const LAZY: Features = Features {
    mem_track: false,
    lazy_pages: true,
};
const ALL: Features = Features {
    mem_track: true,
    lazy_pages: true,
};

fn inputs(resident: u64, mapped: u64, f: Features) -> CostInputs {
    CostInputs {
        resident_bytes: resident,
        mapped_bytes: mapped,
        bandwidth: None,
        dirty_rate: None,
        source: f,
        destination: f,
        max_downtime_secs: None,
        memory_engine: false,
        stop_copy_engine_forced: false,
        tcp_established: false,
    }
}

fn est(c: &Choice, s: Strategy) -> f64 {
    c.estimates
        .iter()
        .find(|e| e.strategy == s)
        .unwrap()
        .downtime_secs
}

fn within(got: f64, measured: f64, tolerance: f64) -> bool {
    (got - measured).abs() <= tolerance * measured
}

/// The bench's medians (results/bench/migration-2026-11-26.md): mtouch, everything touched,
/// mapped = resident + about 8 MiB of binary and stack.
#[test]
fn predicts_the_benchs_mtouch_downtimes_within_50_percent() {
    let m = CostModel::default();
    for (size, stop_copy, post_copy) in [
        (64, 0.512, 0.211),
        (256, 0.792, 0.214),
        (1024, 2.009, 0.272),
    ] {
        let c = choose_strategy(&m, &inputs(size * MIB, (size + 8) * MIB, LAZY));
        assert!(
            within(est(&c, Strategy::StopCopy), stop_copy, 0.5),
            "{size} MiB stop-copy: {c:?}"
        );
        assert!(
            within(est(&c, Strategy::PostCopy), post_copy, 0.5),
            "{size} MiB post-copy: {c:?}"
        );
        assert_eq!(c.strategy, Strategy::PostCopy, "{}", c.reason);
        assert!(within(c.chosen().downtime_secs, post_copy, 0.5));
    }
}

#[test]
fn the_sparse_process_goes_stop_copy() {
    let c = choose_strategy(&CostModel::default(), &inputs(64 * MIB, 1 << 40, LAZY));
    assert_eq!(c.strategy, Strategy::StopCopy, "{}", c.reason);
    assert!(c.chosen().downtime_secs < 1.0, "{c:?}");
    assert!(
        est(&c, Strategy::PostCopy) > 15.0,
        "the lazy dump's 19 s set-up: {c:?}"
    );
    assert!(c.reason.contains("lowest"), "{}", c.reason);
}

#[test]
fn a_small_difference_prefers_no_post_copy_window() {
    let m = CostModel {
        sc_fixed_secs: 0.25,
        ..CostModel::default()
    };
    let c = choose_strategy(&m, &inputs(16 * MIB, 20 * MIB, LAZY));
    assert!(
        est(&c, Strategy::PostCopy) < est(&c, Strategy::StopCopy),
        "{c:?}"
    );
    assert_eq!(c.strategy, Strategy::StopCopy, "{}", c.reason);
    assert!(
        c.reason.contains("without a post-copy window"),
        "{}",
        c.reason
    );
}

#[test]
fn max_downtime_is_honoured() {
    let m = CostModel::default();
    // 64 MiB: stop-copy ~0.52 s, post-copy ~0.21 s.
    let mut i = inputs(64 * MIB, 72 * MIB, LAZY);
    i.max_downtime_secs = Some(0.8);
    let c = choose_strategy(&m, &i);
    assert_eq!(
        (c.strategy, c.meets_target),
        (Strategy::StopCopy, Some(true)),
        "both meet it: no window wins"
    );
    i.max_downtime_secs = Some(0.3);
    let c = choose_strategy(&m, &i);
    assert_eq!(
        (c.strategy, c.meets_target),
        (Strategy::PostCopy, Some(true)),
        "{}",
        c.reason
    );
    i.max_downtime_secs = Some(0.01);
    let c = choose_strategy(&m, &i);
    assert_eq!(
        (c.strategy, c.meets_target),
        (Strategy::PostCopy, Some(false)),
        "{}",
        c.reason
    );
    assert!(c.reason.contains("no strategy"), "{}", c.reason);
}

#[test]
fn unavailable_strategies_are_estimated_but_never_chosen() {
    let c = choose_strategy(&CostModel::default(), &inputs(1 << 30, 1 << 30, NONE));
    assert_eq!(c.strategy, Strategy::StopCopy);
    assert_eq!(c.estimates.len(), 4);
    assert!(c
        .estimates
        .iter()
        .filter(|e| e.strategy != Strategy::StopCopy)
        .all(|e| e.unavailable.is_some()));
    let c = choose_strategy(&CostModel::default(), &inputs(1 << 30, 1 << 30, ALL));
    assert!(c.estimates.iter().all(|e| e.unavailable.is_none()));
    assert!(
        matches!(
            c.strategy,
            Strategy::Hybrid | Strategy::PostCopy | Strategy::PreCopy
        ),
        "{c:?}"
    );
}

#[test]
fn a_slow_link_makes_stop_copy_slower() {
    let m = CostModel::default();
    let mut i = inputs(256 * MIB, 264 * MIB, LAZY);
    let fast = est(&choose_strategy(&m, &i), Strategy::StopCopy);
    i.bandwidth = Some(100e6);
    let slow = est(&choose_strategy(&m, &i), Strategy::StopCopy);
    assert!(slow > fast + 2.0, "{fast} -> {slow}");
}

#[test]
fn choice_serialises_for_the_report() {
    let c = choose_strategy(&CostModel::default(), &inputs(64 * MIB, 1 << 40, LAZY));
    let j = serde_json::to_value(&c).unwrap();
    assert_eq!(j["strategy"], "stop-copy");
    assert_eq!(j["estimates"].as_array().unwrap().len(), 4);
    assert!(c.chosen().to_string().starts_with("stop-copy"));
}

fn features() -> impl proptest::strategy::Strategy<Value = Features> {
    (any::<bool>(), any::<bool>()).prop_map(|(mem_track, lazy_pages)| Features {
        mem_track,
        lazy_pages,
    })
}

proptest! {
    #[test]
    fn choice_is_available_and_honours_its_rules(
        resident in 0u64..(64u64 << 30),
        extra in 0u64..(4u64 << 40),
        bw in proptest::option::of(1e6f64..1e11),
        dirty in proptest::option::of(0f64..1e10),
        src in features(),
        dst in features(),
        target in proptest::option::of(0.01f64..30.0),
    ) {
        let m = CostModel::default();
        let i = CostInputs {
            resident_bytes: resident,
            mapped_bytes: resident + extra,
            bandwidth: bw,
            dirty_rate: dirty,
            source: src,
            destination: dst,
            max_downtime_secs: target,
            memory_engine: false,
            stop_copy_engine_forced: false,
            tcp_established: false,
        };
        let c = choose_strategy(&m, &i);
        let chosen = c.chosen();
        prop_assert!(chosen.unavailable.is_none());
        prop_assert!(c.estimates.iter().all(|e| e.downtime_secs.is_finite() && e.downtime_secs > 0.0));
        let best = c.estimates.iter().filter(|e| e.unavailable.is_none())
            .map(|e| e.downtime_secs).fold(f64::INFINITY, f64::min);
        match target {
            Some(t) => {
                prop_assert_eq!(c.meets_target, Some(best <= t));
                if best <= t {
                    prop_assert!(chosen.downtime_secs <= t);
                } else {
                    prop_assert_eq!(chosen.downtime_secs, best);
                }
            }
            None => {
                let margin = m.similar_secs.max(best * m.similar_ratio);
                prop_assert!(chosen.downtime_secs <= best + margin);
                if chosen.downtime_secs > best {
                    prop_assert!(chosen.postcopy_window_secs.is_none());
                }
            }
        }
    }

    #[test]
    fn stop_copy_grows_with_resident_and_post_copy_with_mapped(
        resident in 0u64..(16u64 << 30),
        more in 1u64..(1u64 << 40),
    ) {
        let m = CostModel::default();
        let e = |r: u64, mapped: u64| estimates(&m, &inputs(r, mapped, LAZY));
        let base = e(resident, resident);
        let more_resident = e(resident + more, resident + more);
        let more_mapped = e(resident, resident + more);
        prop_assert!(more_resident[0].downtime_secs > base[0].downtime_secs);
        prop_assert!(more_mapped[2].downtime_secs > base[2].downtime_secs);
        prop_assert_eq!(more_mapped[0].downtime_secs, base[0].downtime_secs);
    }
}

/// The path each strategy takes is decided by the estimates alone: the migration reads it
/// back with `Choice::over_haul_path` (one decision for `--dry-run`, the report and the run).
#[test]
fn memory_path_is_decided_by_the_estimates() {
    let m = CostModel::default();
    // A dense 1 GiB tree: haul's path is cheaper for stop-copy, and post-copy takes it.
    let mut dense = inputs(1024 * MIB, 1032 * MIB, LAZY);
    dense.memory_engine = true;
    let c = choose_strategy(&m, &dense);
    assert!(c.over_haul_path(Strategy::StopCopy));
    assert!(c.over_haul_path(Strategy::PostCopy));
    assert!(!c.over_haul_path(Strategy::PreCopy));
    // A sparse tree (1 TiB mapped, 64 MiB resident): the lazy dump's set-up makes CRIU's
    // page-server dump cheaper, unless --memory-path haul forces it.
    let mut sparse = inputs(64 * MIB, 1 << 40, LAZY);
    sparse.memory_engine = true;
    assert!(!choose_strategy(&m, &sparse).over_haul_path(Strategy::StopCopy));
    sparse.stop_copy_engine_forced = true;
    assert!(choose_strategy(&m, &sparse).over_haul_path(Strategy::StopCopy));
    // Established TCP connections: stop-copy keeps CRIU's page-server dump (a failed lazy
    // dump leaves them locked), also when forced; post-copy is lazy either way.
    let mut tcp = dense;
    tcp.tcp_established = true;
    tcp.stop_copy_engine_forced = true;
    let c = choose_strategy(&m, &tcp);
    assert!(!c.over_haul_path(Strategy::StopCopy));
    assert!(c.over_haul_path(Strategy::PostCopy));
    // Without the engine (CRIU's path asked for, no lazy pages), no strategy takes haul's
    // path, forced or not.
    dense.memory_engine = false;
    dense.stop_copy_engine_forced = true;
    let c = choose_strategy(&m, &dense);
    for s in [
        Strategy::StopCopy,
        Strategy::PreCopy,
        Strategy::PostCopy,
        Strategy::Hybrid,
    ] {
        assert!(
            !c.over_haul_path(s),
            "{s} over haul's path without the engine"
        );
    }
}
