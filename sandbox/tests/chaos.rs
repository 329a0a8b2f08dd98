//! The short chaos schedule (CI): 32 clients and two probers through two proxies while
//! the master is frozen until the Sentinels fail over, then while the control plane is
//! stopped and the master is frozen again. Asserts the failover invariants that hold
//! today and prints the report, with the invariants that do not hold yet named (see
//! docs/failover.md). `cargo run -p pivot-sandbox --bin pivot-chaos` runs the full
//! schedule.

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use pivot_sandbox::chaos::{self, ChaosOptions, Schedule};

/// Invariants this test asserts: they held in every run so far. A regression fails here.
const ASSERTED: &[&str] = &[
    // The default write_ack is `master`: a write the master acknowledged in the
    // milliseconds before it froze may not have reached a replica (asynchronous
    // replication; 5 such writes in 1 of 6 runs). These three allow exactly that.
    "lost-writes-beyond-replication-lag",
    "counters-beyond-replication-lag",
    "stale-reads-beyond-lost-writes",
    "stale-master",
    "no-errors-during-failover",
    "errors-only-in-flight",
    "in-flight-errors-are-clear",
    // Writes resume within 100 ms of the promotion after a plain freeze (the proxies
    // follow the elected leader's promotion; -22 to 56 ms measured).
    "pivot-resume-100ms",
    // I6: the proxies follow the Sentinels while the control plane is down.
    "follows-sentinels-without-control-plane",
    // ... and follow the elected leader's promotion then too (31 ms measured).
    "pivot-resume-100ms-control-plane-down",
];

/// Invariants printed, not asserted. Move an id to `ASSERTED` once it holds.
const PRINTED: &[&str] = &[
    // Strict versions of the first three: zero loss needs write_ack = replicas(N) (the
    // issue's acceptance: `pivot-chaos --write-ack 'replicas(1)'`).
    "lost-writes",
    "counters",
    "stale-reads",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_chaos_schedule_keeps_the_invariants_that_hold_today() -> Result<()> {
    common::init_tracing();
    let started = Instant::now();
    let report = chaos::run(ChaosOptions {
        clients: 32,
        schedule: Schedule::Short,
        step_duration: Duration::from_secs(2),
        ..ChaosOptions::default()
    })
    .await?;
    eprintln!("{report}");
    eprintln!("(chaos run took {:?})", started.elapsed());

    // The run itself went as planned.
    assert!(
        report.schedule_completed,
        "schedule stopped early: {:?}",
        report.steps
    );
    assert!(
        report.problems.is_empty(),
        "problems: {:?}",
        report.problems
    );
    assert!(
        report.operations.clients_gave_up.is_empty(),
        "{:?}",
        report.operations.clients_gave_up
    );
    assert_eq!(report.failovers.len(), 2, "{:?}", report.failovers);
    for f in &report.failovers {
        assert!(f.new_master.is_some(), "{f:?}");
        assert!(f.unavailable_ms.is_some(), "writes never resumed: {f:?}");
        // The probers issue requests throughout: some are issued during every failover.
        assert!(
            f.issued_during.0 > 0,
            "no request issued during the failover: {f:?}"
        );
    }
    assert!(report.writes.acknowledged > 1000, "{:?}", report.writes);

    let mut violated = Vec::new();
    for id in ASSERTED {
        match report.invariant(id) {
            Some(i) if i.holds => {}
            Some(i) => violated.push(format!("{id}: {} ({})", i.statement, i.detail)),
            None => violated.push(format!("{id}: not checked")),
        }
    }
    eprintln!("\nNot asserted:");
    for id in PRINTED {
        if let Some(i) = report.invariant(id) {
            eprintln!(
                "  {} {id}: {}",
                if i.holds {
                    "holds in this run:"
                } else {
                    "does not hold:"
                },
                i.detail
            );
        }
    }
    assert!(
        violated.is_empty(),
        "invariants violated:\n{}",
        violated.join("\n")
    );
    Ok(())
}
