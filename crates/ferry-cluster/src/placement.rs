//! Placement and migration policy of the load-sharing layer: where a new process goes
//! (bidding, drafting, or the hybrid of the two), whether an automatic migration is worth it,
//! which local process to move and which peer to draft work from.
//!
//! The load measure is the run-queue length normalized by the CPUs a node may use. Every
//! figure is partial and possibly stale: the functions here take a node's view as it is (with
//! each figure's age), ignore figures older than [`Rules::stale_after`], and when a view holds
//! the same node twice (contradictory information) keep only the fresher entry. Nothing here
//! does I/O or reads a clock, so the policies can be tested on synthetic load tables.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::time::Duration;

/// One node's load as the deciding node sees it (from gossip, or fresh from a bid).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeLoad {
    pub name: String,
    /// Placement group (hybrid policy); "" = no group.
    pub group: String,
    /// Runnable tasks (smoothed run-queue length).
    pub run_queue: f64,
    /// CPUs this node may use (its CPU quota, or its CPU count); > 0.
    pub capacity: f64,
    /// Bytes of memory available.
    pub mem_free: u64,
    /// ferry-managed processes running there.
    pub jobs: u32,
    /// How old the figure is (zero for the deciding node itself and for a fresh bid).
    pub age: Duration,
    /// The failure detector thinks the node is alive.
    pub alive: bool,
    /// It takes new processes (not draining, owner away, normal role).
    pub accepting: bool,
}

/// How a node places new processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// The submitting node asks a few peers for their load and picks the best bid.
    Bidding,
    /// Underloaded nodes advertise spare capacity; the submitting node claims it.
    Drafting,
    /// Drafting inside the node's placement group, bidding across groups.
    Hybrid,
}

impl Policy {
    pub const ALL: [Policy; 3] = [Policy::Bidding, Policy::Drafting, Policy::Hybrid];

    /// The word used in the configuration file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Bidding => "bidding",
            Policy::Drafting => "drafting",
            Policy::Hybrid => "hybrid",
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown placement policy {s:?}: use one of {}",
                    Policy::ALL.map(Policy::name).join(", ")
                )
            })
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Tunables; `Default` gives the values in the comments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// Figures older than this are ignored (default 5 s).
    pub stale_after: Duration,
    /// At most this many peers are probed / considered (default 4; the survey: 3-5 suffice).
    pub probe_limit: usize,
    /// A process must have lived this long to be moved automatically (default 2 s).
    pub min_age: Duration,
    /// ... and used this much CPU (default 500 ms).
    pub min_cpu: Duration,
    /// A process that moved stays at least this long where it landed (default 10 s).
    pub min_stay: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            stale_after: Duration::from_secs(5),
            probe_limit: 4,
            min_age: Duration::from_secs(2),
            min_cpu: Duration::from_millis(500),
            min_stay: Duration::from_secs(10),
        }
    }
}

impl NodeLoad {
    /// Normalized load: run_queue / capacity (infinite when the capacity is not positive, so
    /// that such a node always sorts last).
    pub fn normalized(&self) -> f64 {
        if self.capacity > 0.0 {
            self.run_queue / self.capacity
        } else {
            f64::INFINITY
        }
    }

    /// Whole CPU slots: capacity rounded up, at least 1 (a host with a 50% quota has 1 slot).
    pub fn slots(&self) -> f64 {
        self.capacity.ceil().max(1.0)
    }

    /// More runnable tasks than slots, by at least half a task: run_queue >= slots + 0.5.
    pub fn overloaded(&self) -> bool {
        self.run_queue >= self.slots() + 0.5
    }

    /// Spare capacity to draft work: slots - run_queue, if >= 0.5 (else 0.0).
    pub fn spare(&self) -> f64 {
        let spare = self.slots() - self.run_queue;
        if spare >= 0.5 { spare } else { 0.0 }
    }

    /// Run queue plus the processes expected there, over capacity: the normalized load the
    /// node would have with `extra` more tasks.
    fn normalized_with(&self, extra: f64) -> f64 {
        if self.capacity > 0.0 {
            (self.run_queue + extra) / self.capacity
        } else {
            f64::INFINITY
        }
    }

    /// The figures can be compared at all: a finite, non-negative run queue and a positive,
    /// finite capacity. Anything else is treated as missing information.
    fn figures_usable(&self) -> bool {
        self.run_queue.is_finite()
            && self.run_queue >= 0.0
            && self.capacity.is_finite()
            && self.capacity > 0.0
    }
}

/// Whether moving one task from `from` to `to` helps without inviting a move back:
/// after the move the source is still at least as loaded (normalized) as the target:
/// (from.run_queue - 1)/from.capacity >= (to.run_queue + 1)/to.capacity.
/// This inequality IS the hysteresis: equal loads after a move never justify the reverse move.
/// False when either capacity is not positive.
pub fn worth_moving(from: &NodeLoad, to: &NodeLoad) -> bool {
    move_helps(from, 0.0, to, 0.0)
}

/// [`worth_moving`] with `from_extra` / `to_extra` tasks added to the figures first.
fn move_helps(from: &NodeLoad, from_extra: f64, to: &NodeLoad, to_extra: f64) -> bool {
    from.capacity > 0.0
        && to.capacity > 0.0
        && from.normalized_with(from_extra - 1.0) >= to.normalized_with(to_extra + 1.0)
}

/// Least normalized load first, ties by name.
fn by_load(a: &NodeLoad, b: &NodeLoad) -> Ordering {
    a.normalized()
        .total_cmp(&b.normalized())
        .then_with(|| a.name.cmp(&b.name))
}

/// One entry per node name: when the view holds a name more than once (contradictory
/// information, e.g. a gossiped figure next to a fresher direct report), the entry with the
/// smallest age wins; on equal ages the first one. Sorted by name.
fn freshest_by_name(view: &[NodeLoad]) -> Vec<&NodeLoad> {
    let mut freshest: BTreeMap<&str, &NodeLoad> = BTreeMap::new();
    for node in view {
        match freshest.entry(node.name.as_str()) {
            Entry::Vacant(slot) => {
                slot.insert(node);
            }
            Entry::Occupied(mut slot) => {
                if node.age < slot.get().age {
                    slot.insert(node);
                }
            }
        }
    }
    freshest.into_values().collect()
}

/// The peers whose figures can be trusted, whether or not they accept work: not `me`, alive,
/// no older than `stale_after`, usable figures; de-duplicated by name (fresher entry wins)
/// BEFORE filtering, so a fresher "dead" or "stale" entry hides an older rosy one.
fn live_peers<'a>(me: &str, view: &'a [NodeLoad], rules: &Rules) -> Vec<&'a NodeLoad> {
    freshest_by_name(view)
        .into_iter()
        .filter(|peer| {
            peer.name != me && peer.alive && peer.age <= rules.stale_after && peer.figures_usable()
        })
        .collect()
}

/// [`live_peers`] that also take new processes.
fn accepting_peers<'a>(me: &str, view: &'a [NodeLoad], rules: &Rules) -> Vec<&'a NodeLoad> {
    let mut peers = live_peers(me, view, rules);
    peers.retain(|peer| peer.accepting);
    peers
}

/// Peers `me` may use: not `me` (by name), alive, accepting, age <= stale_after, capacity > 0;
/// least normalized load first (ties: by name), at most probe_limit of them.
/// A node named twice in `view` counts once, with its fresher (smaller age) entry; a figure
/// that makes no sense (run queue negative or not finite, capacity not finite) is ignored too.
pub fn usable_peers<'a>(me: &str, view: &'a [NodeLoad], rules: &Rules) -> Vec<&'a NodeLoad> {
    let mut peers = accepting_peers(me, view, rules);
    peers.sort_by(|a, b| by_load(a, b));
    peers.truncate(rules.probe_limit);
    peers
}

/// Bidding placement of a NEW process submitted at `local`: each bid is a fresh NodeLoad of a
/// peer (age zero). Picks the node where the new process lands on the least normalized load
/// after adding it, (run_queue + 1)/capacity, among `local` (if accepting) and accepting, alive
/// bids; ties go to `local`, then by name. None when nobody accepts.
/// Bids carrying `local`'s own name or unusable figures (capacity not positive) are ignored.
pub fn choose_bid<'a>(local: &'a NodeLoad, bids: &'a [NodeLoad]) -> Option<&'a NodeLoad> {
    let landing = |node: &NodeLoad| node.normalized_with(1.0);
    let local_choice = (local.accepting && local.figures_usable()).then_some(local);
    let best_bid = bids
        .iter()
        .filter(|bid| bid.name != local.name && bid.alive && bid.accepting && bid.figures_usable())
        .min_by(|a, b| {
            landing(a)
                .total_cmp(&landing(b))
                .then_with(|| a.name.cmp(&b.name))
        });
    match (local_choice, best_bid) {
        (Some(local), Some(bid)) if landing(bid) < landing(local) => Some(bid),
        (Some(local), _) => Some(local),
        (None, bid) => bid,
    }
}

/// The peers among `peers` with spare capacity, most spare first (then least normalized load,
/// then name), at most `probe_limit`.
fn with_spare_capacity<'a>(mut peers: Vec<&'a NodeLoad>, rules: &Rules) -> Vec<&'a NodeLoad> {
    peers.retain(|peer| peer.spare() > 0.0);
    peers.sort_by(|a, b| b.spare().total_cmp(&a.spare()).then_with(|| by_load(a, b)));
    peers.truncate(rules.probe_limit);
    peers
}

/// Drafting: peers that advertise spare capacity (spare() > 0), usable (as usable_peers, but
/// sorted by spare() descending, then normalized load ascending, then name), at most probe_limit.
pub fn drafters<'a>(me: &str, view: &'a [NodeLoad], rules: &Rules) -> Vec<&'a NodeLoad> {
    with_spare_capacity(accepting_peers(me, view, rules), rules)
}

/// Whether a node asked to take one more process (a draft claim, or an incoming automatic
/// migration) should say yes given its own FRESH load: accepting and
/// run_queue + 1 <= slots + 0.5 for a claim of spare capacity.
pub fn can_take(own: &NodeLoad) -> bool {
    own.accepting && own.figures_usable() && own.run_queue + 1.0 <= own.slots() + 0.5
}

/// Whether a node asked to take one automatically migrated process from `source` should say
/// yes given its own FRESH load and the source's figure sent with the request: accepting, and
/// either it has spare capacity ([`can_take`]) or the move is still worth it by the fresh
/// figures ([`worth_moving`]). This is the receiver-side check against a sender that decided
/// on a stale view; in a cluster where every node is overloaded [`can_take`] alone would
/// refuse every balancing move.
pub fn can_take_from(own: &NodeLoad, source: &NodeLoad) -> bool {
    own.accepting && own.figures_usable() && (can_take(own) || worth_moving(source, own))
}

/// How the hybrid policy groups peers: by their group name, or alone when they have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum GroupKey<'a> {
    Named(&'a str),
    Ungrouped { node: &'a str },
}

/// Hybrid: nodes are in groups. Candidates in order: first the drafters of `me`'s own group
/// (as `drafters`, restricted to group == me's group and me's group non-empty), then, from the
/// OTHER groups, the least-loaded usable node of each group (one representative per group,
/// groups ordered by that representative's normalized load) — these are the nodes the caller
/// asks for bids. Returns (drafters_in_group, bid_targets_in_other_groups). If me's group is "",
/// every usable node counts as "another group" of its own (bidding among all).
///
/// Each list holds at most `probe_limit` nodes. A peer without a group, seen from a node that
/// has one, is a group of its own.
pub fn hybrid_candidates<'a>(
    me: &NodeLoad,
    view: &'a [NodeLoad],
    rules: &Rules,
) -> (Vec<&'a NodeLoad>, Vec<&'a NodeLoad>) {
    if me.group.is_empty() {
        return (Vec::new(), usable_peers(&me.name, view, rules));
    }
    let (same_group, other_groups): (Vec<&NodeLoad>, Vec<&NodeLoad>) =
        accepting_peers(&me.name, view, rules)
            .into_iter()
            .partition(|peer| peer.group == me.group);

    let in_group = with_spare_capacity(same_group, rules);

    let mut representatives: BTreeMap<GroupKey<'a>, &'a NodeLoad> = BTreeMap::new();
    for peer in other_groups {
        let key = if peer.group.is_empty() {
            GroupKey::Ungrouped { node: &peer.name }
        } else {
            GroupKey::Named(&peer.group)
        };
        match representatives.entry(key) {
            Entry::Vacant(slot) => {
                slot.insert(peer);
            }
            Entry::Occupied(mut slot) => {
                if by_load(peer, slot.get()) == Ordering::Less {
                    slot.insert(peer);
                }
            }
        }
    }
    let mut bid_targets: Vec<&NodeLoad> = representatives.into_values().collect();
    bid_targets.sort_by(|a, b| by_load(a, b));
    bid_targets.truncate(rules.probe_limit);
    (in_group, bid_targets)
}

/// A local process the automatic balancer might move.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    /// Time since it started (across migrations).
    pub age: Duration,
    /// CPU time it used (across migrations).
    pub cpu: Duration,
    /// Its state is R (running or waiting for a CPU).
    pub runnable: bool,
    /// ferry can move it (no immobility reason).
    pub mobile: bool,
    /// Time since it last arrived here by migration (None: never moved).
    pub since_arrival: Option<Duration>,
}

/// The process to move off an overloaded node: mobile, runnable, age >= min_age,
/// cpu >= min_cpu, since_arrival None or >= min_stay (past behaviour: long-running, CPU-bound;
/// one that just arrived never bounces on). Prefers the one that used the most CPU
/// (expected to run longest), ties by id. None if none qualifies.
pub fn pick_process<'a>(candidates: &'a [Candidate], rules: &Rules) -> Option<&'a Candidate> {
    candidates
        .iter()
        .filter(|c| {
            c.mobile
                && c.runnable
                && c.age >= rules.min_age
                && c.cpu >= rules.min_cpu
                && c.since_arrival.is_none_or(|stay| stay >= rules.min_stay)
        })
        .min_by(|a, b| b.cpu.cmp(&a.cpu).then_with(|| a.id.cmp(&b.id)))
}

/// Automatic migration, sender side, from `me`'s own possibly stale view: if `me` is
/// overloaded, the usable peer with the least normalized load such that worth_moving(me, peer);
/// `pending` lists peers this node already sent a process to whose gossiped figure does not
/// yet show it: count each occurrence as +1 on that peer's run_queue before deciding (so stale
/// figures never attract a second process). None when not overloaded or nobody qualifies.
///
/// Every usable peer in the view is considered (probe_limit bounds probing, and this decision
/// probes nobody); a node named twice counts once, with its fresher entry; pending names absent
/// from the view are ignored.
pub fn pick_target<'a>(
    me: &NodeLoad,
    view: &'a [NodeLoad],
    pending: &[String],
    rules: &Rules,
) -> Option<&'a NodeLoad> {
    if !me.figures_usable() || !me.overloaded() {
        return None;
    }
    let in_flight = |peer: &NodeLoad| pending.iter().filter(|p| **p == peer.name).count() as f64;
    accepting_peers(&me.name, view, rules)
        .into_iter()
        .map(|peer| (peer, in_flight(peer)))
        .filter(|&(peer, extra)| move_helps(me, 0.0, peer, extra))
        .min_by(|&(a, a_extra), &(b, b_extra)| {
            a.normalized_with(a_extra)
                .total_cmp(&b.normalized_with(b_extra))
                .then_with(|| a.name.cmp(&b.name))
        })
        .map(|(peer, _)| peer)
}

/// Drafting, receiver side: an underloaded `me` (spare() > 0) picks the peer it should draft
/// work from: the most loaded usable peer (alive, fresh, not me; accepting does NOT matter here,
/// a draining node is a fine source) that is overloaded and for which worth_moving(peer, me).
/// None otherwise.
///
/// A `me` that does not accept new processes drafts nothing. Ties in load go to the first name;
/// a node named twice counts once, with its fresher entry.
pub fn draft_from<'a>(me: &NodeLoad, view: &'a [NodeLoad], rules: &Rules) -> Option<&'a NodeLoad> {
    if !me.accepting || !me.figures_usable() || me.spare() <= 0.0 {
        return None;
    }
    live_peers(&me.name, view, rules)
        .into_iter()
        .filter(|peer| peer.overloaded() && worth_moving(peer, me))
        .min_by(|a, b| {
            b.normalized()
                .total_cmp(&a.normalized())
                .then_with(|| a.name.cmp(&b.name))
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// A fresh, alive, accepting, ungrouped node.
    fn node(name: &str, run_queue: f64, capacity: f64) -> NodeLoad {
        NodeLoad {
            name: name.to_string(),
            group: String::new(),
            run_queue,
            capacity,
            mem_free: 1 << 30,
            jobs: 0,
            age: Duration::ZERO,
            alive: true,
            accepting: true,
        }
    }

    fn aged(mut n: NodeLoad, age: Duration) -> NodeLoad {
        n.age = age;
        n
    }

    fn grouped(mut n: NodeLoad, group: &str) -> NodeLoad {
        n.group = group.to_string();
        n
    }

    fn dead(mut n: NodeLoad) -> NodeLoad {
        n.alive = false;
        n
    }

    fn refusing(mut n: NodeLoad) -> NodeLoad {
        n.accepting = false;
        n
    }

    fn names(nodes: &[&NodeLoad]) -> Vec<String> {
        nodes.iter().map(|n| n.name.clone()).collect()
    }

    fn name_of(n: Option<&NodeLoad>) -> Option<&str> {
        n.map(|n| n.name.as_str())
    }

    #[test]
    fn policy_parses_and_displays_its_three_words() {
        for policy in Policy::ALL {
            assert_eq!(policy.to_string().parse::<Policy>().unwrap(), policy);
        }
        assert_eq!("hybrid".parse::<Policy>().unwrap(), Policy::Hybrid);
        let err = "random".parse::<Policy>().unwrap_err();
        for word in ["bidding", "drafting", "hybrid"] {
            assert!(err.contains(word), "{err}");
        }
        assert_eq!(
            serde_json::to_string(&Policy::Drafting).unwrap(),
            "\"drafting\""
        );
        assert_eq!(
            serde_json::from_str::<Policy>("\"bidding\"").unwrap(),
            Policy::Bidding
        );
    }

    #[test]
    fn rules_default_values() {
        let rules = Rules::default();
        assert_eq!(rules.stale_after, Duration::from_secs(5));
        assert_eq!(rules.probe_limit, 4);
        assert_eq!(rules.min_age, Duration::from_secs(2));
        assert_eq!(rules.min_cpu, Duration::from_millis(500));
        assert_eq!(rules.min_stay, Duration::from_secs(10));
    }

    #[test]
    fn load_figures_slots_overload_and_spare() {
        let half = node("q", 0.0, 0.5);
        assert_eq!(half.slots(), 1.0);
        assert_eq!(node("x", 0.0, 2.2).slots(), 3.0);
        assert_eq!(node("x", 0.0, 4.0).slots(), 4.0);
        assert_eq!(node("x", 3.0, 2.0).normalized(), 1.5);
        assert_eq!(node("x", 3.0, 0.0).normalized(), f64::INFINITY);

        assert!(!node("x", 1.4, 0.5).overloaded());
        assert!(node("x", 1.5, 0.5).overloaded());
        assert!(!node("x", 2.4, 2.0).overloaded());
        assert!(node("x", 2.5, 2.0).overloaded());

        assert_eq!(node("x", 0.0, 2.0).spare(), 2.0);
        assert_eq!(node("x", 1.5, 2.0).spare(), 0.5);
        assert_eq!(node("x", 1.6, 2.0).spare(), 0.0);
        assert_eq!(node("x", 5.0, 2.0).spare(), 0.0);
    }

    #[test]
    fn worth_moving_needs_the_source_to_stay_at_least_as_loaded() {
        assert!(worth_moving(&node("a", 3.0, 1.0), &node("b", 1.0, 1.0)));
        assert!(!worth_moving(&node("a", 2.0, 1.0), &node("b", 1.0, 1.0)));
        assert!(!worth_moving(&node("a", 2.0, 1.0), &node("b", 0.0, 0.5)));
        // A big idle host is worth moving to from a small host with two tasks...
        assert!(worth_moving(&node("a", 2.0, 1.0), &node("b", 1.0, 4.0)));
        // ... and not from a big host to a small one with the same normalized load.
        assert!(!worth_moving(&node("a", 4.0, 4.0), &node("b", 1.0, 1.0)));
        // Missing capacity never justifies a move, in either direction.
        assert!(!worth_moving(&node("a", 9.0, 0.0), &node("b", 0.0, 1.0)));
        assert!(!worth_moving(&node("a", 9.0, 1.0), &node("b", 0.0, 0.0)));
    }

    #[test]
    fn worth_moving_never_justifies_the_reverse_move() {
        let capacities = [0.5, 1.0, 2.0];
        let mut forward_moves = 0;
        for from_cap in capacities {
            for to_cap in capacities {
                for from_rq in 0..=12 {
                    for to_rq in 0..=12 {
                        let from = node("a", f64::from(from_rq), from_cap);
                        let to = node("b", f64::from(to_rq), to_cap);
                        if !worth_moving(&from, &to) {
                            continue;
                        }
                        forward_moves += 1;
                        let from_after = node("a", from.run_queue - 1.0, from_cap);
                        let to_after = node("b", to.run_queue + 1.0, to_cap);
                        assert!(
                            !worth_moving(&to_after, &from_after),
                            "{from_rq}/{from_cap} -> {to_rq}/{to_cap} invites a move back"
                        );
                    }
                }
            }
        }
        assert!(
            forward_moves > 100,
            "the grid exercised {forward_moves} moves"
        );
    }

    #[test]
    fn usable_peers_skip_me_dead_refusing_stale_and_capacityless_nodes() {
        let rules = Rules::default();
        let view = vec![
            node("me", 0.0, 1.0),
            dead(node("dead", 0.0, 1.0)),
            refusing(node("draining", 0.0, 1.0)),
            aged(node("stale", 0.0, 1.0), Duration::from_secs(6)),
            aged(node("just-fresh", 0.5, 1.0), Duration::from_secs(5)),
            node("no-cpu", 0.0, 0.0),
            node("garbage", f64::NAN, 1.0),
            node("ok", 1.0, 1.0),
        ];
        let peers = usable_peers("me", &view, &rules);
        assert_eq!(names(&peers), ["just-fresh", "ok"]);
        // Missing information: a node absent from the view is simply never chosen.
        assert!(usable_peers("me", &[], &rules).is_empty());
        assert!(usable_peers("me", &view[..1], &rules).is_empty());
    }

    #[test]
    fn usable_peers_least_loaded_first_ties_by_name_at_most_probe_limit() {
        let rules = Rules {
            probe_limit: 3,
            ..Rules::default()
        };
        let view = vec![
            node("e", 4.0, 1.0),
            node("d", 1.0, 2.0),
            node("c", 1.0, 1.0),
            node("b", 0.5, 1.0),
            node("a", 2.0, 4.0),
            node("f", 0.0, 1.0),
        ];
        assert_eq!(names(&usable_peers("me", &view, &rules)), ["f", "a", "b"]);
        let all = Rules {
            probe_limit: 10,
            ..rules
        };
        assert_eq!(
            names(&usable_peers("me", &view, &all)),
            ["f", "a", "b", "d", "c", "e"]
        );
        let none = Rules {
            probe_limit: 0,
            ..rules
        };
        assert!(usable_peers("me", &view, &none).is_empty());
    }

    #[test]
    fn contradictory_entries_the_fresher_one_wins() {
        let rules = Rules::default();
        // "b" once idle (old figure) and once busy (fresh figure), in both orders.
        for view in [
            vec![
                aged(node("b", 0.0, 1.0), 3 * SECOND),
                aged(node("b", 6.0, 1.0), SECOND),
                aged(node("c", 2.0, 1.0), SECOND),
            ],
            vec![
                aged(node("c", 2.0, 1.0), SECOND),
                aged(node("b", 6.0, 1.0), SECOND),
                aged(node("b", 0.0, 1.0), 3 * SECOND),
            ],
        ] {
            let peers = usable_peers("me", &view, &rules);
            assert_eq!(names(&peers), ["c", "b"]);
            assert_eq!(peers[1].run_queue, 6.0);

            // Only the stale idle figure would make "b" a drafter.
            assert!(drafters("me", &view, &rules).is_empty());

            // Sender side: the busy "b" is not a target, "c" is.
            let me = node("me", 5.0, 1.0);
            assert_eq!(name_of(pick_target(&me, &view, &[], &rules)), Some("c"));

            // Receiver side: the fresh busy "b" is the one to draft from.
            let idle = node("me", 0.0, 1.0);
            let source = draft_from(&idle, &view, &rules).unwrap();
            assert_eq!((source.name.as_str(), source.run_queue), ("b", 6.0));
        }

        // A fresher entry saying the node is dead hides an older one saying it is idle.
        let view = vec![
            aged(node("b", 0.0, 1.0), 3 * SECOND),
            aged(dead(node("b", 0.0, 1.0)), SECOND),
        ];
        assert!(usable_peers("me", &view, &rules).is_empty());
        assert!(drafters("me", &view, &rules).is_empty());
        assert!(pick_target(&node("me", 5.0, 1.0), &view, &[], &rules).is_none());
        let view = vec![
            aged(node("b", 9.0, 1.0), 3 * SECOND),
            aged(dead(node("b", 9.0, 1.0)), SECOND),
        ];
        assert!(draft_from(&node("me", 0.0, 1.0), &view, &rules).is_none());
    }

    #[test]
    fn stale_figures_are_ignored_by_every_decision() {
        let rules = Rules::default();
        let old = rules.stale_after + Duration::from_millis(1);
        let view = vec![
            aged(node("idle-but-stale", 0.0, 4.0), old),
            aged(node("busy-but-stale", 9.0, 1.0), old),
            aged(node("fresh", 2.0, 4.0), SECOND),
        ];
        assert_eq!(names(&usable_peers("me", &view, &rules)), ["fresh"]);
        assert_eq!(names(&drafters("me", &view, &rules)), ["fresh"]);
        let me = node("me", 6.0, 1.0);
        assert_eq!(name_of(pick_target(&me, &view, &[], &rules)), Some("fresh"));
        assert!(draft_from(&node("me", 0.0, 1.0), &view, &rules).is_none());
        let me_grouped = grouped(node("me", 0.0, 1.0), "lab");
        let (in_group, others) = hybrid_candidates(&me_grouped, &view, &rules);
        assert!(in_group.is_empty());
        assert_eq!(names(&others), ["fresh"]);
    }

    #[test]
    fn choose_bid_least_load_after_landing() {
        let local = node("local", 2.0, 1.0); // lands at 3.0
        let bids = vec![
            node("small", 1.0, 1.0),  // 2.0
            node("big", 3.0, 4.0),    // 1.0
            node("bigger", 6.0, 8.0), // 0.875 but refuses
        ];
        let mut bids_refusing = bids.clone();
        bids_refusing[2] = refusing(bids_refusing[2].clone());
        assert_eq!(name_of(choose_bid(&local, &bids_refusing)), Some("big"));
        let mut bids_dead = bids.clone();
        bids_dead[2] = dead(bids_dead[2].clone());
        assert_eq!(name_of(choose_bid(&local, &bids_dead)), Some("big"));
        assert_eq!(name_of(choose_bid(&local, &bids)), Some("bigger"));
        // A bid with no capacity is missing information.
        assert_eq!(
            name_of(choose_bid(&local, &[node("none", 0.0, 0.0)])),
            Some("local")
        );
        assert_eq!(name_of(choose_bid(&local, &[])), Some("local"));
    }

    #[test]
    fn choose_bid_ties_go_to_local_then_by_name() {
        let local = node("m", 1.0, 1.0); // lands at 2.0
        let bids = vec![
            node("z", 3.0, 2.0),
            node("b", 1.0, 1.0),
            node("a", 1.0, 1.0),
        ];
        assert_eq!(name_of(choose_bid(&local, &bids)), Some("m"));
        let busy_local = node("m", 5.0, 1.0);
        assert_eq!(name_of(choose_bid(&busy_local, &bids)), Some("a"));
    }

    #[test]
    fn choose_bid_with_a_non_accepting_local() {
        let local = refusing(node("m", 0.0, 8.0));
        let bids = vec![node("b", 5.0, 1.0), refusing(node("c", 0.0, 1.0))];
        assert_eq!(name_of(choose_bid(&local, &bids)), Some("b"));
        assert!(choose_bid(&local, &bids[1..]).is_none());
        assert!(choose_bid(&local, &[]).is_none());
        // A bid under local's own name does not bypass local's refusal.
        assert!(choose_bid(&local, &[node("m", 0.0, 8.0)]).is_none());
    }

    #[test]
    fn drafters_most_spare_first_then_load_then_name() {
        let rules = Rules::default();
        let view = vec![
            node("full", 1.0, 1.0),   // spare 0
            node("almost", 1.6, 2.0), // spare 0.4 -> 0
            node("one", 3.0, 4.0),    // spare 1, normalized 0.75
            node("one-b", 0.0, 1.0),  // spare 1, normalized 0
            node("one-a", 0.0, 1.0),  // spare 1, normalized 0
            node("three", 1.0, 4.0),  // spare 3
            refusing(node("draining", 0.0, 8.0)),
            dead(node("dead", 0.0, 8.0)),
        ];
        assert_eq!(
            names(&drafters("me", &view, &rules)),
            ["three", "one-a", "one-b", "one"]
        );
        let two = Rules {
            probe_limit: 2,
            ..rules
        };
        assert_eq!(names(&drafters("me", &view, &two)), ["three", "one-a"]);
        assert!(drafters("me", &view[..2], &rules).is_empty());
    }

    #[test]
    fn can_take_only_into_spare_capacity() {
        assert!(can_take(&node("m", 0.0, 0.5)));
        assert!(can_take(&node("m", 0.5, 1.0)));
        assert!(!can_take(&node("m", 0.6, 1.0)));
        assert!(can_take(&node("m", 2.5, 4.0)));
        assert!(!can_take(&node("m", 3.6, 4.0)));
        assert!(!can_take(&refusing(node("m", 0.0, 4.0))));
    }

    #[test]
    fn can_take_from_accepts_balancing_moves_between_overloaded_nodes() {
        let source = node("a", 6.0, 0.5);
        assert!(can_take_from(&node("m", 3.0, 0.5), &source));
        assert!(!can_take_from(&node("m", 5.0, 0.5), &source));
        assert!(can_take_from(&node("m", 0.0, 0.5), &node("a", 0.0, 1.0)));
        assert!(!can_take_from(&refusing(node("m", 0.0, 0.5)), &source));
    }

    #[test]
    fn hybrid_drafters_in_group_first_and_one_representative_per_other_group() {
        let rules = Rules::default();
        let me = grouped(node("me", 3.0, 1.0), "lab");
        let view = vec![
            grouped(node("me", 0.0, 1.0), "lab"),
            grouped(node("lab-idle", 0.0, 2.0), "lab"),
            grouped(node("lab-some", 1.0, 2.0), "lab"),
            grouped(node("lab-full", 2.0, 2.0), "lab"),
            grouped(node("ops-1", 1.0, 1.0), "ops"),
            grouped(node("ops-2", 0.5, 1.0), "ops"),
            grouped(node("ops-3", 2.0, 1.0), "ops"),
            grouped(node("hpc-1", 2.0, 8.0), "hpc"),
            grouped(node("hpc-2", 8.0, 8.0), "hpc"),
            grouped(dead(node("gpu-1", 0.0, 8.0)), "gpu"),
            node("loner", 0.4, 1.0),
        ];
        let (in_group, bid_targets) = hybrid_candidates(&me, &view, &rules);
        assert_eq!(names(&in_group), ["lab-idle", "lab-some"]);
        assert_eq!(names(&bid_targets), ["hpc-1", "loner", "ops-2"]);

        let one = Rules {
            probe_limit: 1,
            ..rules
        };
        let (in_group, bid_targets) = hybrid_candidates(&me, &view, &one);
        assert_eq!(names(&in_group), ["lab-idle"]);
        assert_eq!(names(&bid_targets), ["hpc-1"]);
    }

    #[test]
    fn hybrid_without_a_group_bids_among_all() {
        let rules = Rules::default();
        let me = node("me", 3.0, 1.0);
        let view = vec![
            grouped(node("ops-1", 1.0, 1.0), "ops"),
            grouped(node("ops-2", 0.5, 1.0), "ops"),
            grouped(node("hpc-1", 0.0, 1.0), "hpc"),
            node("loner", 0.7, 1.0),
        ];
        let (in_group, bid_targets) = hybrid_candidates(&me, &view, &rules);
        assert!(in_group.is_empty());
        assert_eq!(names(&bid_targets), ["hpc-1", "ops-2", "loner", "ops-1"]);
        assert_eq!(bid_targets, usable_peers("me", &view, &rules));
    }

    fn candidate(id: &str, cpu_ms: u64) -> Candidate {
        Candidate {
            id: id.to_string(),
            age: Duration::from_secs(60),
            cpu: Duration::from_millis(cpu_ms),
            runnable: true,
            mobile: true,
            since_arrival: None,
        }
    }

    #[test]
    fn pick_process_skips_unsuitable_and_prefers_the_heaviest_cpu_user() {
        let rules = Rules::default();
        let mut immobile = candidate("immobile", 90_000);
        immobile.mobile = false;
        let mut sleeping = candidate("sleeping", 90_000);
        sleeping.runnable = false;
        let mut young = candidate("young", 1_900);
        young.age = Duration::from_millis(1_900);
        let light = candidate("light", 499);
        let mut just_arrived = candidate("just-arrived", 90_000);
        just_arrived.since_arrival = Some(Duration::from_secs(9));
        let unsuitable = vec![immobile, sleeping, young, light, just_arrived];
        assert!(pick_process(&unsuitable, &rules).is_none());

        let mut settled = candidate("settled", 20_000);
        settled.since_arrival = Some(Duration::from_secs(10));
        let mut all = unsuitable.clone();
        all.extend([
            candidate("modest", 500),
            settled,
            candidate("heavy", 30_000),
        ]);
        assert_eq!(pick_process(&all, &rules).unwrap().id, "heavy");

        let ties = vec![
            candidate("b", 7_000),
            candidate("a", 7_000),
            candidate("c", 1_000),
        ];
        assert_eq!(pick_process(&ties, &rules).unwrap().id, "a");
        assert!(pick_process(&[], &rules).is_none());
    }

    #[test]
    fn pick_target_only_when_overloaded_and_worth_it() {
        let rules = Rules::default();
        let view = vec![
            node("idle-small", 0.0, 0.5),
            node("busy-big", 2.0, 4.0),
            refusing(node("idle-draining", 0.0, 8.0)),
            node("busy", 3.0, 1.0),
        ];
        assert!(pick_target(&node("me", 1.4, 1.0), &view, &[], &rules).is_none());
        // (2 - 1)/1 = 1: "idle-small" would land at 2, "busy-big" at 0.75.
        let me = node("me", 2.0, 1.0);
        assert_eq!(
            name_of(pick_target(&me, &view, &[], &rules)),
            Some("busy-big")
        );
        // Heavier: both qualify, the least normalized load wins.
        let me = node("me", 5.0, 1.0);
        assert_eq!(
            name_of(pick_target(&me, &view, &[], &rules)),
            Some("idle-small")
        );
        // Nobody qualifies: (4 - 1)/1 < (3 + 1)/1.
        let me = node("me", 4.0, 1.0);
        assert!(pick_target(&me, &view[3..], &[], &rules).is_none());
        assert!(pick_target(&me, &[], &[], &rules).is_none());
    }

    #[test]
    fn pick_target_counts_pending_sends() {
        let rules = Rules::default();
        let me = node("me", 5.0, 1.0);
        let view = vec![node("idle", 0.0, 1.0), node("some", 1.5, 1.0)];
        assert_eq!(name_of(pick_target(&me, &view, &[], &rules)), Some("idle"));
        let once = vec!["idle".to_string()];
        // idle counts as 1.0 now, still below 1.5.
        assert_eq!(
            name_of(pick_target(&me, &view, &once, &rules)),
            Some("idle")
        );
        let twice = vec!["idle".to_string(), "idle".to_string()];
        assert_eq!(
            name_of(pick_target(&me, &view, &twice, &rules)),
            Some("some")
        );
        // The only peer is idle by its figure, but two sends are on their way there:
        // (3 - 1)/1 >= (0 + 1)/1 without them, not (0 + 2 + 1)/1 with them.
        let me = node("me", 3.0, 1.0);
        assert_eq!(
            name_of(pick_target(&me, &view[..1], &[], &rules)),
            Some("idle")
        );
        assert!(pick_target(&me, &view[..1], &twice, &rules).is_none());
        // A pending send to a node absent from the view changes nothing.
        let elsewhere = vec!["gone".to_string(), "gone".to_string()];
        assert_eq!(
            name_of(pick_target(&me, &view[..1], &elsewhere, &rules)),
            Some("idle")
        );
    }

    #[test]
    fn draft_from_the_most_loaded_overloaded_source() {
        let rules = Rules::default();
        let me = node("me", 0.0, 2.0);
        let view = vec![
            node("busy", 3.0, 1.0),
            refusing(node("draining", 5.0, 1.0)),
            dead(node("dead", 9.0, 1.0)),
            node("not-overloaded", 1.4, 1.0),
            node("big", 12.0, 16.0),
        ];
        assert_eq!(name_of(draft_from(&me, &view, &rules)), Some("draining"));
        assert_eq!(name_of(draft_from(&me, &view[2..], &rules)), None);
        // Not underloaded: no drafting.
        assert!(draft_from(&node("me", 1.6, 2.0), &view, &rules).is_none());
        // A node that does not take work drafts nothing.
        assert!(draft_from(&refusing(node("me", 0.0, 2.0)), &view, &rules).is_none());
        // Overloaded, but the move is not worth it: (2.5 - 1)/1 < (0 + 1)/0.5.
        let small = node("me", 0.0, 0.5);
        assert!(draft_from(&small, &[node("x", 2.5, 1.0)], &rules).is_none());
        assert_eq!(
            name_of(draft_from(&small, &[node("x", 3.0, 1.0)], &rules)),
            Some("x")
        );
    }

    /// One automatic migration in [`simulate`]: round, process, from, to.
    type Move = (u32, String, &'static str, &'static str);

    /// What [`simulate`] ends with: the final process counts per node and the moves made.
    struct Outcome {
        counts: [usize; 3],
        moves: Vec<Move>,
    }

    /// Three one-slot nodes (capacity 0.5), twelve CPU-bound processes started on "a", rounds
    /// of one second (the daemon's balancing period). Each round every node in turn decides
    /// from its own fresh count and its peers' figures as they were one round earlier (age one
    /// second), with `pending` holding its sends the figures do not show yet (cleared once they
    /// do), and moves at most one process, chosen by [`pick_process`]. With
    /// `receiver_checks`, the target refuses unless [`can_take_from`] holds on the fresh counts.
    /// Err when a process moves back to a node it left.
    fn simulate(rules: &Rules, receiver_checks: bool, rounds: u32) -> Result<Outcome, String> {
        const NODES: [&str; 3] = ["a", "b", "c"];
        const CAPACITY: f64 = 0.5;
        const ROUND: Duration = SECOND;

        struct Process {
            id: String,
            node: usize,
            cpu: Duration,
            arrived_in_round: Option<u32>,
            left: Vec<usize>,
        }
        let mut processes: Vec<Process> = (0..12)
            .map(|i| Process {
                id: format!("p{i:02}"),
                node: 0,
                cpu: Duration::from_secs(5),
                arrived_in_round: None,
                left: Vec::new(),
            })
            .collect();
        let counts = |processes: &[Process]| {
            let mut counts = [0usize; 3];
            for p in processes {
                counts[p.node] += 1;
            }
            counts
        };
        let fresh = |name: &str, count: usize| node(name, count as f64, CAPACITY);

        // Figures as published at the start of a round, and that round.
        let mut published = (counts(&processes), 0u32);
        // Per node: (peer, round in which it was sent).
        let mut pending: [Vec<(usize, u32)>; 3] = Default::default();
        let mut moves = Vec::new();

        for round in 0..rounds {
            // Peers see the figures published one round earlier.
            let (lagging, taken_in_round) = published;
            published = (counts(&processes), round);

            for me in 0..NODES.len() {
                // A send shows in figures taken in a later round.
                pending[me].retain(|&(_, sent_in)| sent_in >= taken_in_round);
                let now = counts(&processes);
                let own = fresh(NODES[me], now[me]);
                let view: Vec<NodeLoad> = (0..NODES.len())
                    .filter(|&peer| peer != me)
                    .map(|peer| aged(fresh(NODES[peer], lagging[peer]), ROUND))
                    .collect();
                let pending_names: Vec<String> = pending[me]
                    .iter()
                    .map(|&(peer, _)| NODES[peer].to_string())
                    .collect();
                let Some(target) = pick_target(&own, &view, &pending_names, rules) else {
                    continue;
                };
                let target = NODES.iter().position(|n| *n == target.name).unwrap();
                if receiver_checks && !can_take_from(&fresh(NODES[target], now[target]), &own) {
                    continue;
                }

                let candidates: Vec<Candidate> = processes
                    .iter()
                    .filter(|p| p.node == me)
                    .map(|p| Candidate {
                        id: p.id.clone(),
                        age: Duration::from_secs(10) + ROUND * round,
                        cpu: p.cpu,
                        runnable: true,
                        mobile: true,
                        since_arrival: p.arrived_in_round.map(|r| ROUND * (round - r)),
                    })
                    .collect();
                let Some(chosen) = pick_process(&candidates, rules) else {
                    continue;
                };
                let process = processes.iter_mut().find(|p| p.id == chosen.id).unwrap();
                if process.left.contains(&target) {
                    return Err(format!(
                        "round {round}: {} moves back from {} to {} after {moves:?}",
                        process.id, NODES[me], NODES[target]
                    ));
                }
                process.left.push(me);
                process.node = target;
                process.arrived_in_round = Some(round);
                pending[me].push((target, round));
                moves.push((round, process.id.clone(), NODES[me], NODES[target]));
            }

            // Each node's CPU is shared by the processes on it.
            let now = counts(&processes);
            for p in &mut processes {
                p.cpu += ROUND.mul_f64(CAPACITY / now[p.node] as f64);
            }
        }
        Ok(Outcome {
            counts: counts(&processes),
            moves,
        })
    }

    fn assert_balanced(outcome: &Outcome, rounds: u32) {
        let Outcome { counts, moves } = outcome;
        let spread = counts.iter().max().unwrap() - counts.iter().min().unwrap();
        assert!(spread <= 1, "final counts {counts:?} after moves {moves:?}");
        assert_eq!(counts.iter().sum::<usize>(), 12);
        // Balancing twelve processes needs eight moves; stale figures may cost a few more.
        assert!(moves.len() <= 12, "{} moves: {moves:?}", moves.len());
        let settled_by = moves.last().map_or(0, |m| m.0);
        assert!(
            settled_by + 10 < rounds,
            "still moving at the end: {moves:?}"
        );
    }

    /// The sender side alone, as specified: `pick_target` with `pending` on lagging figures,
    /// `pick_process` with the default rules.
    #[test]
    fn simulation_with_lagging_figures_balances_without_bounces() {
        let outcome = simulate(&Rules::default(), false, 60).unwrap();
        assert_balanced(&outcome, 60);
    }

    /// Without `min_stay`, the fresh receiver-side check alone prevents bounces.
    #[test]
    fn simulation_without_min_stay_relies_on_the_receiver_check() {
        let rules = Rules {
            min_stay: Duration::ZERO,
            ..Rules::default()
        };
        let outcome = simulate(&rules, true, 60).unwrap();
        assert_balanced(&outcome, 60);
        // With neither, a node acting on a peer's lagging figure sends a process on, and the
        // node it reached, acting on lagging figures too, sends it back: both guards matter.
        assert!(simulate(&rules, false, 60).is_err());
    }
}
