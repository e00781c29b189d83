//! Weighted fair share across tenants, with two lanes and aging.
//!
//! Stride scheduling: each tenant has a virtual `pass`; the tenant with the
//! smallest pass among those with work is served next, and its pass grows by
//! `1 / weight`. A tenant that becomes active starts at the current virtual
//! time, so idle time earns no credit and a backlog earns no penalty.
//!
//! Lanes: interactive work is served first, unless the oldest batch job has
//! waited past `aging`, in which case the batch lane is served; batch work
//! therefore never starves.
//!
//! Within a tenant's batch lane, urgent jobs (the lines of batches with the
//! `1h` completion window) go before the rest; across tenants the shares
//! stay by weight, so one tenant's deadlines never take another's share.

use maas_core::Lane;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct QueuedJob {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub lane: Lane,
    pub enqueued_at: Instant,
    pub reply_to: Option<String>,
    /// Served before its tenant's other jobs of the batch lane.
    pub urgent: bool,
}

#[derive(Debug, Default)]
struct TenantQueue {
    pass: f64,
    lanes: [VecDeque<QueuedJob>; 2],
    /// The batch lane's urgent jobs, ahead of `lanes[Batch]`.
    urgent: VecDeque<QueuedJob>,
}

impl TenantQueue {
    fn is_empty(&self) -> bool {
        self.urgent.is_empty() && self.lanes.iter().all(VecDeque::is_empty)
    }

    fn lane_empty(&self, lane: Lane) -> bool {
        self.lanes[lane.index()].is_empty() && (lane != Lane::Batch || self.urgent.is_empty())
    }

    /// The deque a job of `lane` (urgent or not) lives in.
    fn deque(&mut self, lane: Lane, urgent: bool) -> &mut VecDeque<QueuedJob> {
        if lane == Lane::Batch && urgent {
            &mut self.urgent
        } else {
            &mut self.lanes[lane.index()]
        }
    }

    /// When the lane's oldest job was queued.
    fn oldest(&self, lane: Lane) -> Option<Instant> {
        let plain = self.lanes[lane.index()].front().map(|j| j.enqueued_at);
        let urgent = (lane == Lane::Batch)
            .then(|| self.urgent.front().map(|j| j.enqueued_at))
            .flatten();
        plain.into_iter().chain(urgent).min()
    }

    /// The lane's next job: urgent first.
    fn pop(&mut self, lane: Lane) -> Option<QueuedJob> {
        if lane == Lane::Batch {
            if let Some(j) = self.urgent.pop_front() {
                return Some(j);
            }
        }
        self.lanes[lane.index()].pop_front()
    }
}

#[derive(Debug)]
pub struct FairQueue {
    tenants: HashMap<Uuid, TenantQueue>,
    vtime: f64,
    aging: Duration,
    len: usize,
    /// Jobs per lane, kept as jobs come and go (read for the queue-depth gauge).
    lane_lens: [usize; 2],
}

impl FairQueue {
    pub fn new(aging: Duration) -> Self {
        Self {
            tenants: HashMap::new(),
            vtime: 0.0,
            aging,
            len: 0,
            lane_lens: [0; 2],
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Jobs waiting in one lane.
    pub fn lane_len(&self, lane: Lane) -> usize {
        self.lane_lens[lane.index()]
    }

    fn tenant(&mut self, tenant_id: Uuid) -> &mut TenantQueue {
        let vtime = self.vtime;
        let t = self.tenants.entry(tenant_id).or_default();
        if t.is_empty() {
            t.pass = t.pass.max(vtime);
        }
        t
    }

    /// Adds a job at the back of its tenant's lane.
    pub fn push(&mut self, job: QueuedJob) {
        let lane = job.lane.index();
        let (l, u) = (job.lane, job.urgent);
        self.tenant(job.tenant_id).deque(l, u).push_back(job);
        self.len += 1;
        self.lane_lens[lane] += 1;
    }

    /// Puts a job back at the front (a retry keeps its place).
    pub fn push_front(&mut self, job: QueuedJob) {
        let lane = job.lane.index();
        let (l, u) = (job.lane, job.urgent);
        self.tenant(job.tenant_id).deque(l, u).push_front(job);
        self.len += 1;
        self.lane_lens[lane] += 1;
    }

    fn pick_lane(
        &self,
        now: Instant,
        eligible: &impl Fn(Uuid) -> bool,
        allow_batch: bool,
    ) -> Option<Lane> {
        let tenants = || {
            self.tenants
                .iter()
                .filter(|(id, _)| eligible(**id))
                .map(|(_, t)| t)
        };
        if !allow_batch {
            return tenants()
                .any(|t| !t.lane_empty(Lane::Interactive))
                .then_some(Lane::Interactive);
        }
        let oldest_batch = tenants().filter_map(|t| t.oldest(Lane::Batch)).min();
        if oldest_batch.is_some_and(|t| now.saturating_duration_since(t) >= self.aging) {
            return Some(Lane::Batch);
        }
        if tenants().any(|t| !t.lane_empty(Lane::Interactive)) {
            return Some(Lane::Interactive);
        }
        oldest_batch.map(|_| Lane::Batch)
    }

    /// The next job to dispatch. `weight` gives each tenant's weight (≥ 1);
    /// tenants for which `eligible` is false (at their concurrency cap) are
    /// passed over, their jobs keeping their places.
    pub fn pop(
        &mut self,
        now: Instant,
        weight: impl Fn(Uuid) -> u32,
        eligible: impl Fn(Uuid) -> bool,
    ) -> Option<QueuedJob> {
        self.pop_lanes(now, weight, eligible, true)
    }

    /// [`pop`](Self::pop), taking only interactive work unless `allow_batch`
    /// (the worker's last free slots are kept for interactive work).
    pub fn pop_lanes(
        &mut self,
        now: Instant,
        weight: impl Fn(Uuid) -> u32,
        eligible: impl Fn(Uuid) -> bool,
        allow_batch: bool,
    ) -> Option<QueuedJob> {
        let picked = self.pick_lane(now, &eligible, allow_batch)?;
        let lane = picked.index();
        let (&tenant_id, _) = self
            .tenants
            .iter()
            .filter(|(id, t)| !t.lane_empty(picked) && eligible(**id))
            .min_by(|(a_id, a), (b_id, b)| {
                a.pass.total_cmp(&b.pass).then_with(|| a_id.cmp(b_id))
            })?;
        let t = self.tenants.get_mut(&tenant_id)?;
        let job = t.pop(picked)?;
        self.vtime = self.vtime.max(t.pass);
        t.pass += 1.0 / f64::from(weight(tenant_id).max(1));
        self.len -= 1;
        self.lane_lens[lane] -= 1;
        if t.is_empty() && t.pass <= self.vtime {
            self.tenants.remove(&tenant_id);
        }
        Some(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(tenant: Uuid, lane: Lane, at: Instant) -> QueuedJob {
        QueuedJob {
            id: Uuid::new_v4(),
            tenant_id: tenant,
            lane,
            enqueued_at: at,
            reply_to: None,
            urgent: false,
        }
    }

    fn drain(q: &mut FairQueue, n: usize, now: Instant, w: &HashMap<Uuid, u32>) -> Vec<Uuid> {
        (0..n)
            .filter_map(|_| q.pop(now, |t| w.get(&t).copied().unwrap_or(1), |_| true))
            .map(|j| j.tenant_id)
            .collect()
    }

    #[test]
    fn a_late_tenant_is_interleaved_with_a_large_backlog() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let now = Instant::now();
        let mut q = FairQueue::new(Duration::from_secs(3600));
        for _ in 0..1000 {
            q.push(job(a, Lane::Batch, now));
        }
        let w = HashMap::new();
        assert_eq!(drain(&mut q, 100, now, &w), vec![a; 100]);
        for _ in 0..50 {
            q.push(job(b, Lane::Batch, now));
        }
        let next = drain(&mut q, 100, now, &w);
        assert_eq!(
            next.iter().filter(|t| **t == b).count(),
            50,
            "B is served every other dispatch"
        );
        assert_eq!(q.len(), 1000 - 100 - 50);
    }

    #[test]
    fn weights_set_the_share_of_dispatches() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let now = Instant::now();
        let mut q = FairQueue::new(Duration::from_secs(3600));
        for _ in 0..600 {
            q.push(job(a, Lane::Batch, now));
            q.push(job(b, Lane::Batch, now));
        }
        let w = HashMap::from([(a, 2), (b, 1)]);
        let served = drain(&mut q, 300, now, &w);
        let from_a = served.iter().filter(|t| **t == a).count();
        assert_eq!(from_a, 200);
    }

    #[test]
    fn interactive_goes_first_until_batch_work_ages() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let start = Instant::now();
        let mut q = FairQueue::new(Duration::from_secs(10));
        q.push(job(a, Lane::Batch, start));
        q.push(job(b, Lane::Interactive, start));
        q.push(job(b, Lane::Interactive, start));
        let w = HashMap::new();
        assert_eq!(
            q.pop(start, |_| 1, |_| true).map(|j| j.lane),
            Some(Lane::Interactive)
        );
        let later = start + Duration::from_secs(11);
        assert_eq!(
            q.pop(later, |_| 1, |_| true).map(|j| j.lane),
            Some(Lane::Batch),
            "aged batch work is served"
        );
        assert_eq!(drain(&mut q, 5, later, &w), vec![b]);
        assert!(q.is_empty());
    }

    #[test]
    fn an_idle_tenant_earns_no_credit() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let now = Instant::now();
        let mut q = FairQueue::new(Duration::from_secs(3600));
        q.push(job(b, Lane::Batch, now));
        let w = HashMap::new();
        drain(&mut q, 1, now, &w);
        for _ in 0..100 {
            q.push(job(a, Lane::Batch, now));
        }
        drain(&mut q, 50, now, &w);
        for _ in 0..10 {
            q.push(job(b, Lane::Batch, now));
        }
        // B returns after idling: it alternates with A, it does not get 10 in a row.
        let next = drain(&mut q, 16, now, &w);
        let from_b = next.iter().filter(|t| **t == b).count();
        assert!((7..=9).contains(&from_b), "B got {from_b} of 16");
    }

    #[test]
    fn a_tenant_at_its_cap_is_passed_over_and_keeps_its_places() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let now = Instant::now();
        let mut q = FairQueue::new(Duration::from_secs(3600));
        q.push(job(a, Lane::Interactive, now));
        q.push(job(a, Lane::Interactive, now));
        q.push(job(b, Lane::Batch, now));
        // A is capped: B's batch job goes although A's interactive work is older.
        let next = q.pop(now, |_| 1, |t| t != a).unwrap();
        assert_eq!(next.tenant_id, b);
        assert!(
            q.pop(now, |_| 1, |t| t != a).is_none(),
            "nothing else is eligible"
        );
        assert_eq!(
            (
                q.len(),
                q.lane_len(Lane::Interactive),
                q.lane_len(Lane::Batch)
            ),
            (2, 2, 0)
        );
        let w = HashMap::new();
        assert_eq!(
            drain(&mut q, 5, now, &w),
            vec![a, a],
            "A's jobs are still there once it may run again"
        );
        assert_eq!(q.lane_len(Lane::Interactive), 0);
    }

    #[test]
    fn urgent_batch_work_goes_first_within_its_tenant_and_shares_stay_by_weight() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let now = Instant::now();
        let mut q = FairQueue::new(Duration::from_secs(3600));
        for _ in 0..4 {
            q.push(job(a, Lane::Batch, now));
        }
        let mut ids = Vec::new();
        for _ in 0..4 {
            let mut j = job(a, Lane::Batch, now + Duration::from_secs(1));
            j.urgent = true;
            ids.push(j.id);
            q.push(j);
        }
        for _ in 0..8 {
            q.push(job(b, Lane::Batch, now));
        }
        assert_eq!(q.lane_len(Lane::Batch), 16);
        let mut order = Vec::new();
        while let Some(j) = q.pop(now, |_| 1, |_| true) {
            order.push(j);
        }
        // A's urgent lines are its first four served, though queued later.
        let a_served: Vec<Uuid> = order
            .iter()
            .filter(|j| j.tenant_id == a)
            .map(|j| j.id)
            .collect();
        assert_eq!(&a_served[..4], &ids[..]);
        // And B still gets every other slot: urgency does not change shares.
        let first8: Vec<Uuid> = order.iter().take(8).map(|j| j.tenant_id).collect();
        assert_eq!(first8.iter().filter(|t| **t == a).count(), 4);
        assert_eq!(q.len(), 0);
        assert_eq!(q.lane_len(Lane::Batch), 0);
    }

    #[test]
    fn with_batch_held_back_only_interactive_work_is_taken() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let now = Instant::now();
        let mut q = FairQueue::new(Duration::from_millis(1));
        q.push(job(a, Lane::Batch, now - Duration::from_secs(10)));
        assert!(
            q.pop_lanes(now, |_| 1, |_| true, false).is_none(),
            "even aged batch work waits for a slot outside the reserve"
        );
        q.push(job(b, Lane::Interactive, now));
        let j = q.pop_lanes(now, |_| 1, |_| true, false).unwrap();
        assert_eq!((j.tenant_id, j.lane), (b, Lane::Interactive));
        assert_eq!(q.pop(now, |_| 1, |_| true).unwrap().tenant_id, a);
    }
}
