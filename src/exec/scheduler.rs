//! Which instances may start, in what order, and which a failure keeps from running.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use petgraph::Direction;
use petgraph::graph::NodeIndex;

use super::blank_report;
use crate::plan::Plan;
use crate::store::{InstanceReport, InstanceStatus};

/// Which instances may start: all their dependencies finished, none of them failed.
/// A topological sort run live: each instance counts the dependencies it still waits on,
/// and those that reach zero queue by their place in the run order, so picking the next
/// one costs a heap pop, whatever the size of the sweep.
pub(super) struct Scheduler<'a> {
    plan: &'a Plan,
    order: &'a [NodeIndex],
    /// Each instance's place in `order`.
    position: HashMap<NodeIndex, usize>,
    waiting: HashMap<NodeIndex, usize>,
    /// The failed upstream instance that keeps each of these from running.
    blocked: HashMap<NodeIndex, String>,
    /// Places in `order` of the instances free to start, earliest first.
    ready: BinaryHeap<Reverse<usize>>,
    reports: HashMap<NodeIndex, InstanceReport>,
}

impl<'a> Scheduler<'a> {
    pub(super) fn new(plan: &'a Plan, order: &'a [NodeIndex]) -> Self {
        let position: HashMap<NodeIndex, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        // `order` holds every dependency of what it holds (selecting a stage selects what it needs).
        let waiting: HashMap<NodeIndex, usize> = order.iter().map(|&n| (n, plan.graph[n].deps.len())).collect();
        let ready = (0..order.len()).filter(|&i| waiting[&order[i]] == 0).map(Reverse).collect();
        Scheduler { plan, order, position, waiting, blocked: HashMap::new(), ready, reports: HashMap::new() }
    }

    /// The ready instance that comes first in dependency order (deterministic scheduling).
    pub(super) fn next_ready(&mut self) -> Option<NodeIndex> {
        self.ready.pop().map(|Reverse(at)| self.order[at])
    }

    /// Records a finished instance; returns the reports of instances skipped because of it.
    pub(super) fn finish(&mut self, node: NodeIndex, report: InstanceReport) -> Vec<InstanceReport> {
        let failed = !matches!(report.status, InstanceStatus::Hit | InstanceStatus::Ran);
        let mut cause = failed.then(|| report.name.clone());
        self.reports.insert(node, report);
        let mut skipped = Vec::new();
        let mut queue = vec![(node, cause.take())];
        while let Some((done, failure)) = queue.pop() {
            for next in self.plan.graph.neighbors_directed(done, Direction::Outgoing) {
                let Some(count) = self.waiting.get_mut(&next) else { continue };
                if let Some(cause) = &failure {
                    self.blocked.entry(next).or_insert_with(|| cause.clone());
                }
                *count -= 1;
                if *count > 0 {
                    continue;
                }
                match self.blocked.get(&next).cloned() {
                    None => self.ready.push(Reverse(self.position[&next])),
                    Some(cause) => {
                        let mut report = blank_report(&self.plan.graph[next], InstanceStatus::Skipped);
                        report.error = Some(format!("not run: `{cause}` failed"));
                        skipped.push(report.clone());
                        self.reports.insert(next, report);
                        queue.push((next, Some(cause)));
                    }
                }
            }
        }
        skipped
    }

    pub(super) fn into_reports(mut self) -> Vec<InstanceReport> {
        self.order.iter().filter_map(|n| self.reports.remove(n)).collect()
    }
}
