//! What a migration did, in the paper's metrics (definitions: `docs/migration.md`).

use serde::{Deserialize, Serialize};

/// The five homogeneous migration algorithms (survey, section 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    TotalCopy,
    PreCopy,
    DemandPaging,
    FileServer,
    FreezeFree,
}

impl Algorithm {
    pub const ALL: [Algorithm; 5] = [
        Algorithm::TotalCopy,
        Algorithm::PreCopy,
        Algorithm::DemandPaging,
        Algorithm::FileServer,
        Algorithm::FreezeFree,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::TotalCopy => "total-copy",
            Algorithm::PreCopy => "pre-copy",
            Algorithm::DemandPaging => "demand-paging",
            Algorithm::FileServer => "file-server",
            Algorithm::FreezeFree => "freeze-free",
        }
    }

    /// Whether the process runs at the destination before all its pages are there.
    pub fn lazy(self) -> bool {
        matches!(
            self,
            Algorithm::DemandPaging | Algorithm::FileServer | Algorithm::FreezeFree
        )
    }

    /// Whether the page store is involved.
    pub fn uses_store(self) -> bool {
        matches!(self, Algorithm::FileServer | Algorithm::FreezeFree)
    }
}

impl std::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown algorithm {s:?}: use one of {}",
                    Algorithm::ALL.map(Algorithm::name).join(", ")
                )
            })
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Distribution of remote page-fault service times.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultStats {
    pub count: u64,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl FaultStats {
    pub fn from_samples(mut ms: Vec<f64>) -> FaultStats {
        if ms.is_empty() {
            return FaultStats::default();
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        FaultStats {
            count: ms.len() as u64,
            median_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: ms[ms.len() - 1],
        }
    }
}

/// One migration, measured. Times in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationReport {
    pub id: String,
    pub algorithm: Option<Algorithm>,
    pub from: String,
    pub to: String,
    pub pid: i32,
    /// The process's pid at the destination, as that host numbers it.
    pub new_pid: i32,
    /// Threads of the process, the main one included.
    #[serde(default)]
    pub threads: u32,
    /// The process is the init of a PID namespace of its own (a job of `ferry run`): it kept
    /// its pid (1) and its threads' ids there. Otherwise they are new at the destination.
    #[serde(default)]
    pub ids_kept: bool,
    /// Processes moved: 1, or a tree's living members (0 in reports of older daemons).
    #[serde(default)]
    pub processes: u32,
    /// Targets that refused, with their reason, before `to` accepted.
    pub rejected: Vec<(String, String)>,
    /// Request received → process executing at the destination.
    pub latency_ms: f64,
    /// Process not executing: stopped at the source → executing at the destination.
    pub freeze_ms: f64,
    /// Capturing the state at the source (stop → state ready to send).
    pub excision_ms: f64,
    /// Rebuilding the process at the destination (state received → ready to run).
    pub insertion_ms: f64,
    /// Executing at the destination → the old host no longer needed (`None`: not yet).
    pub residual_ms: Option<f64>,
    /// Request received → no residual dependency (`None`: not yet).
    pub total_ms: Option<f64>,
    /// Bytes of process state (everything but page contents).
    pub state_bytes: u64,
    /// Bytes of page contents sent to the destination (first copies).
    pub page_bytes: u64,
    /// Bytes of pages sent again because they changed (pre-copy).
    pub resent_bytes: u64,
    /// Bytes written to the page store.
    pub store_bytes: u64,
    pub precopy_rounds: u32,
    /// Page faults the destination had to ask another host (or the store) for.
    pub remote_faults: FaultStats,
    /// Faults served from the page store.
    pub store_faults: u64,
    /// The process's message links, if it had any (filled in by the daemon once they moved).
    #[serde(default)]
    pub links: Option<LinkFigures>,
}

/// How a migration affected the process's message links.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkFigures {
    pub links: u32,
    /// Message freeze time: the longest interval during which a message sent to the process
    /// could not enter its queue (held at the old host), measured at the old host from the
    /// moment it held deliveries to the moment the new host confirmed it took the link.
    pub message_freeze_ms: f64,
    /// Deliveries held during that interval, then redirected to the new host.
    pub held: u64,
    /// Extra delay of held deliveries at the old host (before the redirection round trip).
    pub held_max_ms: f64,
    pub held_mean_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>().unwrap(), a);
            assert_eq!(
                serde_json::to_string(&a).unwrap(),
                format!("\"{}\"", a.name())
            );
        }
        assert!(
            "teleport"
                .parse::<Algorithm>()
                .unwrap_err()
                .contains("freeze-free")
        );
    }

    #[test]
    fn fault_stats() {
        let s = FaultStats::from_samples((1..=100).map(f64::from).collect());
        assert_eq!(s.count, 100);
        assert_eq!(s.median_ms, 51.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert_eq!(FaultStats::from_samples(vec![]), FaultStats::default());
    }
}

/// Named moments of one side of a migration, for the daemon log: where the time went.
#[derive(Debug, Clone)]
pub struct Timeline {
    start: std::time::Instant,
    last: std::time::Instant,
    marks: Vec<(&'static str, std::time::Duration)>,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline::new()
    }
}

impl Timeline {
    pub fn new() -> Timeline {
        let now = std::time::Instant::now();
        Timeline {
            start: now,
            last: now,
            marks: Vec::new(),
        }
    }

    /// Records that `what` just ended (its duration is the time since the previous mark).
    pub fn mark(&mut self, what: &'static str) {
        let now = std::time::Instant::now();
        self.marks.push((what, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (what, d)) in self.marks.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{what} {:.2} ms", d.as_secs_f64() * 1e3)?;
        }
        write!(
            f,
            " (total {:.2} ms)",
            (self.last - self.start).as_secs_f64() * 1e3
        )
    }
}
