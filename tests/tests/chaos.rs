//! The shortened chaos suite (issue 11): each fault once on its own Redis and two gateway nodes,
//! with a steady stream through the publish API and clients that resume with `since`. Every
//! acknowledged event reaches every session of its user once and in order, or that session got a
//! `resync`. (The full suite is `make chaos`, which writes docs/reliability.md.)

use anyhow::{ensure, Result};
use gleepost_tests::chaos::{self, Plan};

#[tokio::test(flavor = "multi_thread")]
async fn every_fault_once_loses_duplicates_and_reorders_nothing() -> Result<()> {
    let outcome = chaos::run(&Plan::short()).await?;
    for l in &outcome.lines {
        eprintln!(
            "{:<40} acked {:>5} expected {:>5} delivered {:>5} covered {:>4} lost {} dup {} ooo {} \
             resyncs {} closed {} retries {} unacked {}",
            l.name, l.acknowledged, l.expected, l.delivered, l.covered, l.lost, l.duplicated,
            l.out_of_order, l.resyncs, l.closed, l.retries, l.unacknowledged
        );
    }
    for l in &outcome.lines {
        ensure!(l.acknowledged > 0, "{}: nothing was acknowledged", l.name);
        ensure!(
            l.expected == l.delivered + l.covered + l.lost,
            "{}: the ledger does not add up: {l:?}",
            l.name
        );
        ensure!(
            l.lost == 0,
            "{}: {} acknowledged deliveries lost (neither delivered nor covered by resync), e.g. {:?}",
            l.name,
            l.lost,
            l.lost_examples
        );
        ensure!(l.duplicated == 0, "{}: {} duplicated", l.name, l.duplicated);
        ensure!(
            l.out_of_order == 0,
            "{}: {} out of order",
            l.name,
            l.out_of_order
        );
        ensure!(
            l.foreign == 0,
            "{}: {} unexpected frames",
            l.name,
            l.foreign
        );
    }
    Ok(())
}
