//! The directory's file, `definitions.json` in the data directory: the node's users, vhosts,
//! limits and permissions in RabbitMQ's definitions format (so it is also an export), with
//! the names the configuration file gave at the last start.
//!
//! At start the file is read first and the configuration applied over it: the entries the
//! configuration gives (`[[users]]`, `[[vhosts]]`, `[[permissions]]`, `[[topic-permissions]]`,
//! `[[policies]]`)
//! are set as given each time, so an edit of the file takes effect; users and vhosts it gave
//! (and policies) at the last start and gives no more are removed (a removed vhost's data is kept, closed);
//! what was made at run time stays. Without `[[permissions]]`, each configured user gets every
//! permission on each configured vhost when the user or the vhost is new to the directory
//! (RabbitMQ gives guest that on `/`); a pair it knew keeps what it has.
//!
//! Every change is written to a new file, synced, renamed over the old one and the directory
//! synced before it takes effect: a crash leaves the old state or the new, and a change that
//! cannot be written does not happen. A file that cannot be read stops the start; it is never
//! overwritten.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use warren_core::directory::{Change, Directory};
use warren_core::permissions::{Access, Pattern, Permission};

use crate::config::Settings;
use crate::definitions::AccessDefinitions;

/// The file's name in the data directory.
pub const FILE_NAME: &str = "definitions.json";

/// Bytes the file may have: the directory's own bounds (users, vhosts, permissions) keep it
/// far below this.
const MAX_FILE_BYTES: u64 = 256 << 20;

/// Where the directory is kept.
#[derive(Debug)]
pub struct DirectoryFile {
    path: PathBuf,
    /// What the configuration gave at this start (see the module's documentation).
    from_config: FromConfig,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct FromConfig {
    #[serde(default)]
    users: BTreeSet<String>,
    #[serde(default)]
    vhosts: BTreeSet<String>,
    /// Policies, as (vhost, name).
    #[serde(default)]
    policies: BTreeSet<(String, String)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Contents {
    #[serde(flatten)]
    access: AccessDefinitions,
    #[serde(default)]
    warren_from_config: FromConfig,
}

impl DirectoryFile {
    /// Reads the file in `data_dir` (if there is one), applies `settings` over it, writes the
    /// result back, and returns it.
    pub fn open(data_dir: &Path, settings: &Settings) -> anyhow::Result<(DirectoryFile, Directory)> {
        let path = data_dir.join(FILE_NAME);
        let stored = read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut dir = Directory {
            users: Vec::new(),
            access: Access::rules(Vec::new(), Vec::new()),
            ..Default::default()
        };
        let mut before = FromConfig::default();
        if let Some(c) = stored {
            let plan = c.access.plan().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let vhosts = plan.vhosts.into_iter().map(Change::PutVHost);
            for change in vhosts.chain(plan.changes) {
                dir.apply(change).with_context(|| format!("{}", path.display()))?;
            }
            before = c.warren_from_config;
        }
        let config = FromConfig {
            users: settings.users.iter().map(|u| u.name.clone()).collect(),
            vhosts: std::iter::once("/".to_string()).chain(settings.vhosts.iter().cloned()).collect(),
            policies: settings.policies.iter().map(|p| (p.vhost.clone(), p.name.clone())).collect(),
        };
        for gone in before.users.difference(&config.users) {
            let _ = dir.apply(Change::DeleteUser(gone.clone()));
        }
        for gone in before.vhosts.difference(&config.vhosts) {
            let _ = dir.apply(Change::DeleteVHost(gone.clone()));
        }
        for (vhost, name) in before.policies.difference(&config.policies) {
            let _ = dir.apply(Change::DeletePolicy { vhost: vhost.clone(), name: name.clone() });
        }
        for (change, what) in config_changes(settings, &dir) {
            dir.apply(change).with_context(|| format!("the configuration's {what}"))?;
        }
        let file = DirectoryFile { path, from_config: config };
        file.save(&dir).with_context(|| format!("cannot write {}", file.path.display()))?;
        Ok((file, dir))
    }

    /// Writes `dir` durably: on return it is on disk, or an error says why not and the old
    /// file is as it was.
    pub fn save(&self, dir: &Directory) -> std::io::Result<()> {
        // One source of salts for every user a save hashes.
        let mut random = std::fs::File::open("/dev/urandom")?;
        let salt = || {
            let mut s = [0u8; warren_core::password::SALT_LEN];
            std::io::Read::read_exact(&mut random, &mut s).map(|()| s)
        };
        let access = AccessDefinitions::of(dir, salt)?;
        let contents = Contents { access, warren_from_config: self.from_config.clone() };
        let text = serde_json::to_vec_pretty(&contents).map_err(std::io::Error::other)?;
        // What is written must be readable at the next start.
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(std::io::Error::other(format!(
                "the directory would take {} bytes, over the {MAX_FILE_BYTES} its file may have",
                text.len()
            )));
        }
        let tmp = self.path.with_extension("json.new");
        // It holds password hashes: the owner's alone.
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        let parent = self.path.parent().unwrap_or(Path::new("."));
        // Past the rename the new file is in place but maybe not durably: said so, since the
        // change is refused in memory yet may come back at the next start.
        std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "{e}: the file was replaced but not synced; the change may or may not survive a restart"
                ),
            )
        })
    }
}

/// The file's contents, `None` when there is no file.
fn read(path: &Path) -> anyhow::Result<Option<Contents>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let len = f.metadata()?.len();
    anyhow::ensure!(
        len <= MAX_FILE_BYTES,
        "{len} bytes, over the {MAX_FILE_BYTES} a directory file may have"
    );
    Ok(Some(serde_json::from_reader(std::io::BufReader::new(f))?))
}

/// What the configuration sets, in order, each with what it is for an error message.
pub(crate) fn config_changes(settings: &Settings, dir: &Directory) -> Vec<(Change, String)> {
    let mut out = Vec::new();
    let vhosts: Vec<&str> = std::iter::once("/").chain(settings.vhosts.iter().map(String::as_str)).collect();
    for v in &vhosts {
        out.push((Change::PutVHost(v.to_string()), format!("vhost '{v}'")));
        if let Some(limits) = settings.vhost_limits.get(*v) {
            out.push((Change::SetVHostLimits(v.to_string(), *limits), format!("limits of vhost '{v}'")));
        }
    }
    for u in &settings.users {
        out.push((Change::PutUser(u.clone()), format!("user '{}'", u.name)));
    }
    for p in &settings.policies {
        out.push((Change::PutPolicy(p.clone()), format!("policy '{}' in vhost '{}'", p.name, p.vhost)));
    }
    match &*settings.access {
        Access::Rules { permissions, topics } => {
            for p in permissions {
                out.push((
                    Change::SetPermission(p.clone()),
                    format!("permissions of '{}' on '{}'", p.user, p.vhost),
                ));
            }
            for t in topics {
                let what = format!("topic permissions of '{}' on '{}'", t.user, t.vhost);
                out.push((Change::SetTopicPermission(t.clone()), what));
            }
        }
        // A pair the directory has seen before keeps what it has (a run-time change stays).
        Access::Unrestricted => {
            for u in &settings.users {
                let new_user = dir.user(&u.name).is_none();
                for v in vhosts.iter().filter(|v| new_user || !dir.vhosts.contains_key(**v)) {
                    out.push((
                        Change::SetPermission(everything(&u.name, v)),
                        format!("permissions of '{}'", u.name),
                    ));
                }
            }
        }
    }
    out
}

/// Every permission on `vhost`.
fn everything(user: &str, vhost: &str) -> Permission {
    let all = || Pattern::new(".*").unwrap_or_else(|_| unreachable!("'.*' compiles"));
    Permission { user: user.into(), vhost: vhost.into(), configure: all(), write: all(), read: all() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_core::auth::User;

    fn settings(users: &[&str], vhosts: &[&str]) -> Settings {
        Settings {
            users: users
                .iter()
                .map(|n| User { name: n.to_string(), loopback_only: false, ..User::guest() })
                .collect(),
            vhosts: vhosts.iter().map(|v| v.to_string()).collect(),
            ..Settings::default()
        }
    }

    #[test]
    fn run_time_changes_survive_and_the_configuration_applies_over_them() {
        let data = tempfile::tempdir().expect("dir");
        let (file, dir) =
            DirectoryFile::open(data.path(), &settings(&["guest", "app"], &["a"])).expect("open");
        assert!(dir.access.may_open("app", "a"), "a configured user gets everything without [[permissions]]");
        // At run time: a user and a vhost of its own, and app loses `a`.
        let mut next = dir.clone();
        next.apply(Change::PutVHost("runtime".into())).expect("vhost");
        next.apply(Change::PutUser(User { name: "made".into(), ..User::guest() })).expect("user");
        next.apply(Change::SetPermission(everything("made", "runtime"))).expect("perm");
        next.apply(Change::ClearPermission { user: "app".into(), vhost: "a".into() }).expect("clear");
        file.save(&next).expect("save");
        // The next start: app is no longer configured, vhost `a` neither.
        let (_, dir) = DirectoryFile::open(data.path(), &settings(&["guest"], &[])).expect("reopen");
        assert!(dir.user("app").is_none(), "a user the configuration dropped is gone");
        assert!(!dir.vhosts.contains_key("a"), "so is a vhost it dropped");
        assert!(
            dir.user("made").is_some() && dir.access.may_open("made", "runtime"),
            "run-time changes stay"
        );
        assert!(dir.user("guest").is_some_and(|u| u.password.verify("guest")));
    }

    #[test]
    fn an_unreadable_file_stops_the_start_and_is_kept() {
        let data = tempfile::tempdir().expect("dir");
        let path = data.path().join(FILE_NAME);
        std::fs::write(&path, b"{\"users\": [ {\"name\": 1} ").expect("write");
        let e = DirectoryFile::open(data.path(), &settings(&["guest"], &[])).expect_err("refused");
        assert!(format!("{e:#}").contains(FILE_NAME), "{e:#}");
        assert_eq!(std::fs::read(&path).expect("kept"), b"{\"users\": [ {\"name\": 1} ");
    }
}
