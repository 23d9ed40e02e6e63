//! The daemon's configuration: a TOML file, overridable by command-line flags.
//!
//! ```toml
//! node = "n1"                          # this host's name in the cluster
//! listen = "10.77.0.1:7070"            # TCP address for peer daemons
//! socket = "/run/ferry/n1.sock"        # Unix socket for the local CLI
//! secret_file = "/run/ferry/secret"    # cluster secret (peers authenticate with it)
//! state_dir = "/run/ferry/n1"          # migration records, logs of outcomes
//! page_store = "/run/ferry/store"      # directory, or "node:NAME" for a page-store daemon
//! encrypt_pages = true                 # false: pages in clear on trusted links
//! role = "normal"                      # or "page-store"
//! cgroup = "/sys/fs/cgroup/cpu/ferry/n1"
//! memory_limit = 1073741824           # bytes a migrated process may need here (optional)
//! gossip = "10.77.0.1:7070"            # UDP address for load gossip (default: listen)
//! group = "lab"                        # placement group of the hybrid policy (optional)
//! policy = "bidding"                   # placement: bidding | drafting | hybrid
//! auto_migrate = false                 # move CPU-bound processes off this node when overloaded
//!
//! [[peer]]
//! name = "n2"
//! addr = "10.77.0.2:7070"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::placement::Policy;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {detail}", path.display())]
    Read { path: PathBuf, detail: String },
    #[error("{}: {detail}", path.display())]
    Parse { path: PathBuf, detail: String },
    #[error("configuration: {0}")]
    Invalid(String),
}

/// Where pages go for the file-server and freeze-free algorithms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageStore {
    Dir(PathBuf),
    Node(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    #[default]
    Normal,
    PageStore,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Peer {
    pub name: String,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    node: Option<String>,
    listen: Option<SocketAddr>,
    socket: Option<PathBuf>,
    secret_file: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    page_store: Option<String>,
    encrypt_pages: Option<bool>,
    role: Option<Role>,
    cgroup: Option<PathBuf>,
    memory_limit: Option<u64>,
    gossip: Option<SocketAddr>,
    group: Option<String>,
    policy: Option<String>,
    auto_migrate: Option<bool>,
    #[serde(default)]
    peer: Vec<Peer>,
}

/// A complete, checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    pub listen: SocketAddr,
    pub socket: PathBuf,
    pub secret_file: PathBuf,
    pub state_dir: PathBuf,
    pub page_store: Option<PageStore>,
    pub encrypt_pages: bool,
    pub role: Role,
    pub cgroup: Option<PathBuf>,
    /// Most bytes of memory a process may need to be accepted here (beyond what the machine
    /// has available anyway).
    pub memory_limit: Option<u64>,
    /// UDP address of the load gossip (chitchat); the peers' TCP addresses are the seeds.
    pub gossip: SocketAddr,
    /// Placement group (hybrid policy); "" = none.
    pub group: String,
    /// How this node places new processes and picks targets for automatic migration.
    pub policy: Policy,
    /// Move long-running CPU-bound processes off this node when it is overloaded.
    pub auto_migrate: bool,
    pub peers: Vec<Peer>,
}

/// Command-line values, which win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub node: Option<String>,
    pub listen: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    pub secret_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub page_store: Option<String>,
    pub plain_pages: bool,
    pub role: Option<Role>,
    pub group: Option<String>,
    pub policy: Option<Policy>,
    pub auto_migrate: bool,
    pub peers: Vec<Peer>,
}

pub const DEFAULT_SOCKET: &str = "/run/ferry/ferry.sock";
pub const DEFAULT_PORT: u16 = 7070;

fn parse_store(s: &str) -> Result<PageStore, ConfigError> {
    match s.strip_prefix("node:") {
        Some(n) if !n.is_empty() => Ok(PageStore::Node(n.to_string())),
        Some(_) => Err(ConfigError::Invalid(
            "page_store \"node:\" needs a node name".into(),
        )),
        None if s.starts_with('/') => Ok(PageStore::Dir(PathBuf::from(s))),
        None => Err(ConfigError::Invalid(format!(
            "page_store {s:?}: expected an absolute directory or \"node:NAME\""
        ))),
    }
}

/// Parses `NAME=HOST:PORT` (for `--peer`).
pub fn parse_peer(s: &str) -> Result<Peer, ConfigError> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| ConfigError::Invalid(format!("peer {s:?}: expected NAME=ADDRESS:PORT")))?;
    let addr = addr
        .parse()
        .map_err(|e| ConfigError::Invalid(format!("peer {s:?}: {e}")))?;
    Ok(Peer {
        name: name.to_string(),
        addr,
    })
}

impl Config {
    /// Reads `path` (if any) and applies `over`.
    pub fn load(path: Option<&Path>, over: Overrides) -> Result<Config, ConfigError> {
        let file: File = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                    path: p.to_path_buf(),
                    detail: e.to_string(),
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: p.to_path_buf(),
                    detail: e.to_string(),
                })?
            }
            None => toml::from_str("").map_err(|e| ConfigError::Invalid(e.to_string()))?,
        };
        let node = over
            .node
            .or(file.node)
            .unwrap_or_else(ferry_sys::host::hostname);
        if node.is_empty() || !node.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(ConfigError::Invalid(format!(
                "node name {node:?}: use letters, digits and '-'"
            )));
        }
        let listen = over
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)));
        let secret_file = over.secret_file.or(file.secret_file).ok_or_else(|| {
            ConfigError::Invalid(
                "no cluster secret: set secret_file (or --secret-file); peers authenticate with it"
                    .into(),
            )
        })?;
        let page_store = match over.page_store.or(file.page_store) {
            Some(s) => Some(parse_store(&s)?),
            None => None,
        };
        let mut peers = file.peer;
        for p in over.peers {
            peers.retain(|q| q.name != p.name);
            peers.push(p);
        }
        if let Some(dup) = peers.iter().find(|p| p.name == node) {
            return Err(ConfigError::Invalid(format!(
                "peer {} has this node's own name",
                dup.name
            )));
        }
        let policy = match (over.policy, file.policy) {
            (Some(p), _) => p,
            (None, Some(text)) => text
                .parse()
                .map_err(|e: String| ConfigError::Invalid(format!("policy: {e}")))?,
            (None, None) => Policy::Bidding,
        };
        let group = over.group.or(file.group).unwrap_or_default();
        if !group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(ConfigError::Invalid(format!(
                "group {group:?}: use letters, digits and '-'"
            )));
        }
        Ok(Config {
            gossip: file.gossip.unwrap_or(listen),
            group,
            policy,
            auto_migrate: over.auto_migrate || file.auto_migrate.unwrap_or(false),
            state_dir: over
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| PathBuf::from(format!("/var/lib/ferry/{node}"))),
            node,
            listen,
            socket: over
                .socket
                .or(file.socket)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            secret_file,
            page_store,
            encrypt_pages: !over.plain_pages && file.encrypt_pages.unwrap_or(true),
            role: over.role.or(file.role).unwrap_or_default(),
            cgroup: file.cgroup,
            memory_limit: file.memory_limit,
            peers,
        })
    }

    pub fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
node = "n1"
listen = "10.77.0.1:7070"
socket = "/run/ferry/n1.sock"
secret_file = "/run/ferry/secret"
state_dir = "/run/ferry/n1"
page_store = "/run/ferry/store"
encrypt_pages = true
cgroup = "/sys/fs/cgroup/cpu/ferry/n1"

[[peer]]
name = "n2"
addr = "10.77.0.2:7070"

[[peer]]
name = "n3"
addr = "10.77.0.3:7070"
"#;

    fn write(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn reads_the_testnet_format() {
        let f = write(SAMPLE);
        let c = Config::load(Some(f.path()), Overrides::default()).unwrap();
        assert_eq!(c.node, "n1");
        assert_eq!(c.listen, "10.77.0.1:7070".parse().unwrap());
        assert_eq!(c.peers.len(), 2);
        assert_eq!(
            c.peer("n3").unwrap().addr,
            "10.77.0.3:7070".parse().unwrap()
        );
        assert_eq!(
            c.page_store,
            Some(PageStore::Dir("/run/ferry/store".into()))
        );
        assert!(c.encrypt_pages);
        assert_eq!(c.role, Role::Normal);
    }

    #[test]
    fn flags_win_over_the_file() {
        let f = write(SAMPLE);
        let c = Config::load(
            Some(f.path()),
            Overrides {
                node: Some("x9".into()),
                plain_pages: true,
                page_store: Some("node:n3".into()),
                peers: vec![parse_peer("n2=10.0.0.9:1").unwrap()],
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.node, "x9");
        assert!(!c.encrypt_pages);
        assert_eq!(c.page_store, Some(PageStore::Node("n3".into())));
        assert_eq!(c.peer("n2").unwrap().addr, "10.0.0.9:1".parse().unwrap());
    }

    #[test]
    fn load_sharing_keys() {
        let c = Config::load(Some(write(SAMPLE).path()), Overrides::default()).unwrap();
        assert_eq!(c.policy, Policy::Bidding);
        assert!(!c.auto_migrate);
        assert_eq!(c.group, "");
        assert_eq!(c.gossip, c.listen);
        let f = write(&format!(
            "{SAMPLE}\n"
        ).replace("encrypt_pages = true", "encrypt_pages = true\npolicy = \"hybrid\"\ngroup = \"lab\"\nauto_migrate = true\ngossip = \"10.77.0.1:7071\""));
        let c = Config::load(Some(f.path()), Overrides::default()).unwrap();
        assert_eq!(c.policy, Policy::Hybrid);
        assert_eq!(c.group, "lab");
        assert!(c.auto_migrate);
        assert_eq!(c.gossip, "10.77.0.1:7071".parse().unwrap());
        let c = Config::load(
            Some(f.path()),
            Overrides {
                policy: Some(Policy::Drafting),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.policy, Policy::Drafting);
        let bad = write(&SAMPLE.replace("encrypt_pages = true", "policy = \"lottery\""));
        let e = Config::load(Some(bad.path()), Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("bidding, drafting, hybrid"), "{e}");
        let bad = write(&SAMPLE.replace("encrypt_pages = true", "group = \"a b\""));
        let e = Config::load(Some(bad.path()), Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("group"), "{e}");
    }

    #[test]
    fn clear_errors() {
        let f = write("node = \"n1\"\nbogus = 1\nsecret_file = \"/s\"\n");
        let e = Config::load(Some(f.path()), Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let f = write("node = \"n1\"\n");
        let e = Config::load(Some(f.path()), Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("no cluster secret"), "{e}");
        let f = write("node = \"n1\"\nsecret_file = \"/s\"\npage_store = \"rel\"\n");
        let e = Config::load(Some(f.path()), Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("absolute directory"), "{e}");
        assert!(parse_peer("n2").is_err());
        assert!(parse_peer("n2=nothost").is_err());
    }
}
