//! The end of a run: once the stack is quiet, every acknowledged write is read back from
//! the master the Sentinels name, directly (not through a proxy).

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::{Context, Result};

use super::workload::{ClientLog, OpKind, Outcome, counter_key, data_key, data_value};
use crate::Topology;

/// Keys per `MGET`.
const MGET_CHUNK: usize = 1000;

/// What the final master holds, compared with what the clients were told.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// The master the Sentinels named at the end.
    pub master: Option<SocketAddr>,
    /// `SET`s acknowledged to a client.
    pub acked_sets: u64,
    /// Acknowledged `SET`s whose key is missing on the master: `(client, seq)`.
    pub lost: Vec<(u32, u64)>,
    /// Acknowledged `SET`s whose key holds another value.
    pub wrong_value: Vec<(u32, u64)>,
    /// `SET`s that got an error.
    pub failed_sets: u64,
    /// ... of which the master holds the key anyway (the write ran; allowed only for
    /// errors that say it may have).
    pub failed_sets_applied: u64,
    /// Per client counter.
    pub counters: Vec<CounterCheck>,
}

/// One client's counter against its `INCR`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterCheck {
    /// Client index.
    pub client: u32,
    /// The counter's value on the master (0 when missing).
    pub final_value: i64,
    /// `INCR`s acknowledged.
    pub acked: u64,
    /// `INCR`s that failed with an error that does not rule out that they ran (anything
    /// but `TRYAGAIN`).
    pub ambiguous: u64,
    /// Acknowledged `INCR`s that returned a value not above the previous acknowledged one
    /// (an increment was lost in between).
    pub went_backwards: u64,
}

impl CounterCheck {
    /// Acknowledged increments the counter is missing.
    pub fn missing(&self) -> u64 {
        let final_value = u64::try_from(self.final_value).unwrap_or(0);
        self.acked.saturating_sub(final_value)
    }

    /// Increments beyond what the client could have caused (a silent retry).
    pub fn excess(&self) -> u64 {
        let final_value = u64::try_from(self.final_value).unwrap_or(0);
        final_value.saturating_sub(self.acked + self.ambiguous)
    }
}

/// Reads every workload key back from `master`.
pub async fn verify(
    topology: &Topology,
    master: SocketAddr,
    logs: &[ClientLog],
) -> Result<Verification> {
    let node = topology
        .node_by_addr(master)
        .with_context(|| format!("the final master {master} is not one of our nodes"))?;
    let mut conn = node.connection().await?;
    let mut v = Verification {
        master: Some(master),
        ..Verification::default()
    };

    // Every SET, acknowledged or not: (client, seq, acknowledged).
    let sets: Vec<(u32, u64, bool)> = logs
        .iter()
        .flat_map(|l| &l.ops)
        .filter(|op| op.kind == OpKind::Set)
        .map(|op| (op.client, op.seq, op.acknowledged_write()))
        .collect();
    for chunk in sets.chunks(MGET_CHUNK) {
        let keys: Vec<String> = chunk.iter().map(|(c, s, _)| data_key(*c, *s)).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .with_context(|| format!("MGET on the final master {master}"))?;
        for ((client, seq, acked), value) in chunk.iter().zip(values) {
            let expected = data_value(*client, *seq);
            match (acked, value) {
                (true, None) => v.lost.push((*client, *seq)),
                (true, Some(got)) if got != expected => v.wrong_value.push((*client, *seq)),
                (false, Some(got)) if got == expected => v.failed_sets_applied += 1,
                _ => {}
            }
            if *acked {
                v.acked_sets += 1;
            } else {
                v.failed_sets += 1;
            }
        }
    }

    let mut checks: HashMap<u32, CounterCheck> = HashMap::new();
    for op in logs.iter().flat_map(|l| &l.ops) {
        if op.kind != OpKind::Incr {
            continue;
        }
        let check = checks.entry(op.client).or_insert(CounterCheck {
            client: op.client,
            final_value: 0,
            acked: 0,
            ambiguous: 0,
            went_backwards: 0,
        });
        match &op.outcome {
            Outcome::Counted(_) => check.acked += 1,
            Outcome::Failed(e) if !e.not_applied => check.ambiguous += 1,
            _ => {}
        }
    }
    for log in logs {
        // A client's INCRs are sequential: acknowledged values must strictly increase.
        let mut last: Option<i64> = None;
        for op in &log.ops {
            if let Outcome::Counted(n) = op.outcome {
                if last.is_some_and(|l| n <= l)
                    && let Some(c) = checks.get_mut(&op.client)
                {
                    c.went_backwards += 1;
                }
                last = Some(n);
            }
        }
    }
    let mut clients: Vec<u32> = checks.keys().copied().collect();
    clients.sort_unstable();
    for chunk in clients.chunks(MGET_CHUNK) {
        let keys: Vec<String> = chunk.iter().map(|c| counter_key(*c)).collect();
        let values: Vec<Option<i64>> =
            redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .with_context(|| format!("MGET of the counters on {master}"))?;
        for (client, value) in chunk.iter().zip(values) {
            if let Some(c) = checks.get_mut(client) {
                c.final_value = value.unwrap_or(0);
            }
        }
    }
    v.counters = clients.iter().filter_map(|c| checks.remove(c)).collect();
    Ok(v)
}
