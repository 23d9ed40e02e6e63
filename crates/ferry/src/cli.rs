//! Command-line grammar.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "Move running, unmodified Linux processes between machines",
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 not migratable, 4 invalid or incompatible image.\n\
                  `ferry restore` without --detach exits with the restored process's status."
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); or set FERRY_LOG.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// The local daemon's control socket.
    #[arg(
        long,
        global = true,
        env = "FERRY_SOCKET",
        default_value = "/run/ferry/ferry.sock"
    )]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Freeze a process (with its descendants, if it has children) and write its image into
    /// DIR; the processes end once the image is safely written, unless --leave-running.
    Checkpoint {
        /// The process to checkpoint (the root of the tree taken with it).
        pid: i32,
        /// Image directory (created; must not exist or be empty).
        #[arg(long)]
        dir: PathBuf,
        /// Let the process continue after the checkpoint.
        #[arg(long)]
        leave_running: bool,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Bring the process (or process tree) in DIR back to life, with its old pids where
    /// free (a tree needs them); ferry then waits for it and exits with its status, unless
    /// --detach.
    Restore {
        /// Image directory written by `ferry checkpoint`.
        #[arg(long)]
        dir: PathBuf,
        /// Print the pid and return at once.
        #[arg(long)]
        detach: bool,
        /// Report as JSON (stdout with --detach, else stderr).
        #[arg(long)]
        json: bool,
    },
    /// Summarize an image: mappings, files, registers, memory totals.
    Inspect {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Move a running process to another host (through the local daemon).
    Migrate {
        /// The process to move.
        pid: i32,
        /// Destination node(s), tried in order until one accepts: `n2` or `n2,n3`.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<String>,
        #[arg(long, default_value = "freeze-free")]
        algorithm: ferry_migrate::Algorithm,
        /// Print the report as JSON on stdout (no progress bar).
        #[arg(long)]
        json: bool,
        /// Once the process runs there, wait at most this long (seconds) for its residual
        /// dependency on this host to end before printing the report (the daemon finishes it
        /// either way).
        #[arg(long, default_value_t = 5.0)]
        wait: f64,
    },
    /// Start a migratable process somewhere in the cluster (remote execution). The working
    /// directory, program and output files must exist on the node that runs it (a shared
    /// file system); output goes to CWD/ferry-ID.out and .err unless --stdout/--stderr.
    Run {
        /// Run it on this node.
        #[arg(long, conflicts_with = "policy")]
        on: Option<String>,
        /// Placement policy (default: the daemon's).
        #[arg(long)]
        policy: Option<ferry_cluster::placement::Policy>,
        /// File for its standard output (default CWD/ferry-ID.out).
        #[arg(long)]
        stdout: Option<PathBuf>,
        /// File for its standard error (default CWD/ferry-ID.err).
        #[arg(long)]
        stderr: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Every ferry-managed process of the cluster: id, node, pid, CPU time, age, state,
    /// mobility.
    Ps {
        #[arg(long)]
        json: bool,
    },
    /// The nodes this node knows, their load and how old that figure is.
    Nodes {
        #[arg(long)]
        json: bool,
    },
    /// Move every mobile process off NODE and refuse new ones there (--undo: take them again).
    Drain {
        node: String,
        #[arg(long)]
        undo: bool,
    },
    /// Autonomous workstation: when its owner is present, NODE evicts foreign processes and
    /// takes none.
    Owner { node: String, presence: Presence },
    /// Run the ferry daemon of this host.
    Daemon(DaemonArgs),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    Present,
    Away,
}

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Configuration file (TOML); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The control socket for the local CLI (default: the config's, else /run/ferry/ferry.sock).
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
    /// This host's name in the cluster.
    #[arg(long)]
    pub node: Option<String>,
    /// Address for peer daemons, e.g. 10.77.0.1:7070.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// A peer daemon, NAME=ADDRESS:PORT (repeatable).
    #[arg(long = "peer")]
    pub peers: Vec<String>,
    /// The cluster secret (32 bytes, or 64 hex characters).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Directory for migration records.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Page store: a directory, or node:NAME for a page-store daemon.
    #[arg(long)]
    pub page_store: Option<String>,
    /// Send pages unencrypted (peers still authenticate): for trusted links.
    #[arg(long)]
    pub plain_pages: bool,
    /// normal, or page-store (holds pages for others, runs no processes).
    #[arg(long)]
    pub role: Option<String>,
    /// Placement group (for the hybrid policy).
    #[arg(long)]
    pub group: Option<String>,
    /// Placement policy: bidding, drafting or hybrid.
    #[arg(long)]
    pub policy: Option<ferry_cluster::placement::Policy>,
    /// Move long-running CPU-bound processes off this node when it is overloaded.
    #[arg(long)]
    pub auto_migrate: bool,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Checkpoint and restore processes of several resident sizes; report medians.
    Checkpoint(BenchCheckpointArgs),
    /// Migrate processes between two test hosts with every algorithm, several sizes, write
    /// rates and link speeds; report medians against the link's raw TCP throughput.
    Migrate(BenchMigrateArgs),
    /// Move process trees started by `ferry run` (a shell pipeline, make -j2, python3's
    /// multiprocessing pool, SysV shared memory, a unix server and its client) between two test
    /// hosts mid-run with every algorithm; report medians and check every output byte for byte.
    Trees(BenchTreesArgs),
    /// Makespan of 12 CPU-bound jobs submitted at one of 3 test hosts: no balancing, each
    /// placement policy, automatic migration; against the ideal.
    Balance(BenchBalanceArgs),
    /// Two processes ping-pong messages while one migrates back and forth between two test
    /// hosts with each algorithm: message freeze time, extra delay, lost and duplicated
    /// messages; `--soak N` adds N freeze-free migrations in a row.
    Messages(BenchMessagesArgs),
    /// (internal) echo every message back to its sender until "stop".
    #[command(hide = true)]
    MsgEcho {
        #[arg(long)]
        name: String,
    },
    /// (internal) ping-pong numbered messages with TO until the file `stop` appears.
    #[command(hide = true)]
    MsgPing {
        #[arg(long)]
        name: String,
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// (internal) send COUNT numbered messages to TO without waiting.
    #[command(hide = true)]
    MsgBurst {
        #[arg(long)]
        name: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        count: u64,
    },
    /// (internal) receive COUNT numbered messages, check their order.
    #[command(hide = true)]
    MsgSink {
        #[arg(long)]
        name: String,
        #[arg(long)]
        count: u64,
    },
    /// (internal) a CPU-bound job: UNITS million steps of an LCG; prints the final value.
    #[command(hide = true)]
    Spin {
        #[arg(long)]
        units: u64,
    },
    /// (internal) hold SIZE MiB of written memory and wait; used by the benchmarks.
    #[command(hide = true)]
    HoldMemory {
        #[arg(long)]
        mib: u64,
        /// Rewrite pages (same content) at this rate, MiB/s.
        #[arg(long, default_value_t = 0)]
        dirty_mib_s: u64,
        /// Threads in all (the others each hold and check 64 KiB of their own).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// (internal) accept TCP connections and discard their bytes.
    #[command(hide = true)]
    TcpSink {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// (internal) send MIB MiB over one TCP connection; print MB/s.
    #[command(hide = true)]
    TcpSource {
        #[arg(long)]
        connect: std::net::SocketAddr,
        #[arg(long)]
        mib: u64,
    },
}

#[derive(Args, Debug)]
pub struct BenchMessagesArgs {
    /// Algorithms to measure.
    #[arg(
        long,
        default_value = "total-copy,pre-copy,demand-paging,file-server,freeze-free",
        value_delimiter = ','
    )]
    pub algorithms: Vec<String>,
    /// Migrations per algorithm (medians are reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Then this many freeze-free migrations back and forth.
    #[arg(long, default_value_t = 0)]
    pub soak: usize,
    /// Message size in bytes (at least 8).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Pause between two migrations, ms.
    #[arg(long, default_value_t = 300)]
    pub pause_ms: u64,
    /// The test-cluster script.
    #[arg(long, default_value = "scripts/testnet.sh")]
    pub testnet: std::path::PathBuf,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchMigrateArgs {
    /// Resident sizes, e.g. 16M,256M,1G,4G.
    #[arg(long, default_value = "16M,256M,1G,4G", value_delimiter = ',')]
    pub sizes: Vec<String>,
    /// Algorithms to measure.
    #[arg(
        long,
        default_value = "total-copy,pre-copy,demand-paging,file-server,freeze-free",
        value_delimiter = ','
    )]
    pub algorithms: Vec<String>,
    /// Write rates of the workload while it moves, MiB/s (0: idle).
    #[arg(long, default_value = "0,50", value_delimiter = ',')]
    pub dirty_rates: Vec<u64>,
    /// Link settings: "unshaped", or a tc rate such as 1gbit.
    #[arg(long, default_value = "unshaped,1gbit", value_delimiter = ',')]
    pub links: Vec<String>,
    /// Runs per cell (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Encrypt page traffic (default: plain, as on a trusted link; authentication is always on).
    #[arg(long)]
    pub encrypt_pages: bool,
    /// Write a plot of latency and total time per algorithm (SVG).
    #[arg(long, default_value = "bench-migrate.svg")]
    pub plot: Option<PathBuf>,
    /// Also write every cell's figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The test cluster script.
    #[arg(long, default_value = "scripts/testnet.sh")]
    pub testnet: PathBuf,
}

#[derive(Args, Debug)]
pub struct BenchTreesArgs {
    /// Trees to move: pipeline, make, pool, sysv, unix-server.
    #[arg(
        long,
        default_value = "pipeline,make,pool,sysv,unix-server",
        value_delimiter = ','
    )]
    pub trees: Vec<String>,
    /// Algorithms to measure.
    #[arg(
        long,
        default_value = "total-copy,pre-copy,demand-paging,file-server,freeze-free",
        value_delimiter = ','
    )]
    pub algorithms: Vec<String>,
    /// Runs per tree and algorithm (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The repository's workloads directory (its python3 programs).
    #[arg(long, default_value = "workloads")]
    pub workloads: PathBuf,
    /// Also write every cell's figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The test cluster script.
    #[arg(long, default_value = "scripts/testnet.sh")]
    pub testnet: PathBuf,
}

#[derive(Args, Debug)]
pub struct BenchBalanceArgs {
    /// Configurations: none, bidding, drafting, hybrid (placement at submission), auto,
    /// auto-drafting, auto-hybrid (every job at n1, then automatic migration choosing targets
    /// by bidding, drafting or hybrid).
    #[arg(
        long,
        default_value = "none,bidding,drafting,hybrid,auto,auto-drafting,auto-hybrid",
        value_delimiter = ','
    )]
    pub configs: Vec<String>,
    /// Jobs, all submitted at n1.
    #[arg(long, default_value_t = 12)]
    pub jobs: usize,
    /// CPU seconds of the shortest and longest job (seeded uniform mix in between).
    #[arg(long, default_value = "1.0,6.0", value_delimiter = ',')]
    pub cpu_seconds: Vec<f64>,
    /// Seed of the job mix.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// CPU quota of each of the 3 hosts, percent of one CPU.
    #[arg(long, default_value_t = 50)]
    pub quota: u32,
    /// Runs per configuration (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Also write every run's figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The test cluster script.
    #[arg(long, default_value = "scripts/testnet.sh")]
    pub testnet: PathBuf,
}

#[derive(Args, Debug)]
pub struct BenchCheckpointArgs {
    /// Resident sizes to test, e.g. 64M,1G,4G.
    #[arg(long, default_value = "64M,1G,4G", value_delimiter = ',')]
    pub sizes: Vec<String>,
    /// Thread counts to test for each size, e.g. 1,16.
    #[arg(long, default_value = "1", value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Runs per size (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Where images go (tmpfs by default).
    #[arg(long, default_value = "/dev/shm/ferry-bench")]
    pub dir: PathBuf,
    #[arg(long)]
    pub json: bool,
}
