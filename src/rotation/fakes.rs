//! Hand-written fakes of the ports, for fast unit tests of the step machine. One `World` plays
//! Secrets Manager, the state table and the database (behind a stand-in proxy), and can "kill the
//! process" before or after any effect: from then on every call fails, as if the process had died,
//! until `restart`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::clock::{Clock, SystemClock};
use super::ports::*;
use super::record::StepRecord;
use crate::secret::{Credentials, Endpoint, Engine};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Before,
    After,
}

#[derive(Debug, Clone)]
pub struct Version {
    pub id: String,
    pub value: String,
    pub stages: Vec<String>,
}

#[derive(Debug, Default)]
pub struct State {
    /// secret name -> versions
    pub secrets: HashMap<String, Vec<Version>>,
    /// user -> password in the database
    pub db: HashMap<String, String>,
    /// every user whose password was set, in order
    pub password_changes: Vec<String>,
    /// key -> (owner, expires, fence, record); no owner: free. `expires` is the holder's hint,
    /// and changes with every renewal.
    pub leases: HashMap<String, (String, u64, u64, Option<StepRecord>)>,
    /// key -> the period its holder asked takers to wait
    pub periods: HashMap<String, Duration>,
    /// effects so far (puts, stage moves, password sets, record saves)
    pub effects: usize,
    pub crash_at: Option<(usize, When)>,
    pub dead: bool,
    /// The stand-in proxy ignores changed secrets while this is set.
    pub proxy_frozen: bool,
    pub puts: Vec<(String, String)>,
    /// What the rotator reported, in order.
    pub reports: Vec<RotationReport>,
    /// database user -> who claimed it
    pub claims: HashMap<String, UserClaim>,
    /// database user -> secrets that marked it as their AWSCURRENT
    pub in_use: HashMap<String, std::collections::BTreeSet<String>>,
    /// Secrets with Secrets Manager's own rotation attached.
    pub rotation_enabled: std::collections::HashSet<String>,
    /// PutSecretValue stores the version, then answers ResourceExists (as AWS may to a retry
    /// of a write whose first answer was lost).
    pub puts_answer_exists: bool,
    /// Secrets whose writes (PutSecretValue) are denied, as by a key or resource policy.
    pub deny_puts: std::collections::HashSet<String>,
    /// database user -> its sessions that ran a statement recently (what the guard sees)
    pub sessions: HashMap<String, Vec<crate::rotation::ports::SessionGroup>>,
    /// A reader's host -> the sessions it keeps of its own (the writer's `sessions` are not
    /// there). Any other host is the writer.
    pub reader_sessions: HashMap<String, Vec<crate::rotation::ports::SessionGroup>>,
    /// Hosts that answer no login.
    pub unreachable_hosts: std::collections::HashSet<String>,
    /// What the RDS API says about any host: `None` when it knows none.
    pub rds: Option<Result<RdsTopology, RdsError>>,
    /// RDS calls made.
    pub rds_calls: usize,
    /// database user -> the hosts of its accounts, when it has more than one
    pub accounts: HashMap<String, Vec<String>>,
    /// Only "master" may list accounts (as on MySQL, where that takes rights on `mysql.user`).
    pub accounts_hidden: bool,
    /// The host of the account a login matches when it may not list them (`None`: `%`).
    pub logged_in_host: Option<String>,
    /// The database is a read replica.
    pub read_only: bool,
    /// What the database asks of a new password.
    pub rules: crate::rotation::ports::PasswordRules,
}

#[derive(Clone, Default)]
pub struct World(pub Arc<Mutex<State>>);

fn unavailable() -> String {
    "the process died".into()
}

impl World {
    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    pub fn add_secret(&self, name: &str, value: Value) {
        self.state().secrets.insert(
            name.to_owned(),
            vec![Version {
                id: format!("{name}-v0"),
                value: value.to_string(),
                stages: vec!["AWSCURRENT".into()],
            }],
        );
    }

    pub fn crash_at(&self, effect: usize, when: When) {
        let mut s = self.state();
        s.crash_at = Some((effect, when));
        s.effects = 0;
    }

    /// A new process: calls work again, and the dead process's leases are taken over (at once
    /// here: taking over a lease has tests of its own).
    pub fn restart(&self) {
        let mut s = self.state();
        s.dead = false;
        s.crash_at = None;
        for lease in s.leases.values_mut() {
            lease.0.clear();
        }
    }

    pub fn labelled(&self, name: &str, stage: Stage) -> Option<Value> {
        let s = self.state();
        s.secrets[name]
            .iter()
            .find(|v| v.stages.iter().any(|l| l == stage.as_str()))
            .map(|v| serde_json::from_str(&v.value).unwrap())
    }

    pub fn version_id_with(&self, name: &str, stage: Stage) -> Option<String> {
        let s = self.state();
        s.secrets[name]
            .iter()
            .find(|v| v.stages.iter().any(|l| l == stage.as_str()))
            .map(|v| v.id.clone())
    }

    pub fn record(&self, key: &str) -> Option<StepRecord> {
        self.state().leases.get(key).and_then(|l| l.3.clone())
    }

    /// Counts an effect and decides whether the process dies around it.
    fn effect<T>(&self, apply: impl FnOnce(&mut State) -> T) -> Result<T, String> {
        let mut s = self.state();
        if s.dead {
            return Err(unavailable());
        }
        s.effects += 1;
        let crash = s.crash_at.filter(|(n, _)| *n == s.effects).map(|(_, w)| w);
        match crash {
            Some(When::Before) => {
                s.dead = true;
                Err(unavailable())
            }
            Some(When::After) => {
                apply(&mut s);
                s.dead = true;
                Err(unavailable())
            }
            None => Ok(apply(&mut s)),
        }
    }

    fn alive(&self) -> Result<std::sync::MutexGuard<'_, State>, String> {
        let s = self.state();
        if s.dead {
            Err(unavailable())
        } else {
            Ok(s)
        }
    }
}

fn name_of(id: &str) -> &str {
    id.strip_prefix("arn:fake:").unwrap_or(id)
}

#[async_trait]
impl SecretStore for World {
    async fn describe(&self, secret_id: &str) -> Result<SecretMeta, SecretStoreError> {
        let s = self.alive().map_err(SecretStoreError::Unavailable)?;
        let name = name_of(secret_id);
        let versions = s
            .secrets
            .get(name)
            .ok_or_else(|| SecretStoreError::NotFound(secret_id.into()))?;
        Ok(SecretMeta {
            deleted: false,
            arn: format!("arn:fake:{name}"),
            versions: versions
                .iter()
                .filter(|v| !v.stages.is_empty())
                .map(|v| (v.id.clone(), v.stages.clone()))
                .collect(),
            rotation_enabled: s.rotation_enabled.contains(name),
            rotation_lambda: None,
            name: name.to_owned(),
            kms_key_id: None,
            tags: Vec::new(),
        })
    }

    async fn get(
        &self,
        secret_id: &str,
        at: At<'_>,
    ) -> Result<Option<SecretVersion>, SecretStoreError> {
        let s = self.alive().map_err(SecretStoreError::Unavailable)?;
        let versions = s
            .secrets
            .get(name_of(secret_id))
            .ok_or_else(|| SecretStoreError::NotFound(secret_id.into()))?;
        let found = versions.iter().find(|v| match at {
            At::Stage(stage) => v.stages.iter().any(|l| l == stage.as_str()),
            At::Version(id) => v.id == id,
        });
        Ok(found.map(|v| SecretVersion {
            arn: format!("arn:fake:{}", name_of(secret_id)),
            version_id: v.id.clone(),
            stages: v.stages.clone(),
            value: SecretString::from(v.value.clone()),
        }))
    }

    async fn put(
        &self,
        secret_id: &str,
        token: &str,
        value: &SecretString,
        stage: Stage,
    ) -> Result<(), SecretStoreError> {
        let name = name_of(secret_id).to_owned();
        let value = value.expose_secret().to_owned();
        let token = token.to_owned();
        self.effect(move |s| {
            s.puts.push((name.clone(), token.clone()));
            if s.deny_puts.contains(&name) {
                return Err(SecretStoreError::Denied(format!(
                    "AccessDeniedException: not allowed to write {name}"
                )));
            }
            let versions = s
                .secrets
                .get_mut(&name)
                .ok_or(SecretStoreError::NotFound(name.clone()))?;
            if let Some(v) = versions.iter().find(|v| v.id == token) {
                // As AWS: the same token with another value is refused.
                return if v.value == value {
                    Ok(())
                } else {
                    Err(SecretStoreError::VersionExists(token.clone()))
                };
            }
            let label = stage.as_str().to_owned();
            let old = versions.iter().position(|v| v.stages.contains(&label));
            if let Some(i) = old {
                versions[i].stages.retain(|l| *l != label);
                if stage == Stage::Current {
                    // As AWS: the version that loses AWSCURRENT becomes AWSPREVIOUS.
                    for v in versions.iter_mut() {
                        v.stages.retain(|l| l != "AWSPREVIOUS");
                    }
                    versions[i].stages.push("AWSPREVIOUS".into());
                }
            }
            versions.push(Version {
                id: token.clone(),
                value: value.clone(),
                stages: vec![label],
            });
            if s.puts_answer_exists {
                return Err(SecretStoreError::VersionExists(token.clone()));
            }
            Ok(())
        })
        .map_err(SecretStoreError::Unavailable)?
    }

    async fn move_stage(
        &self,
        secret_id: &str,
        stage: Stage,
        to: &str,
        from: &str,
    ) -> Result<(), SecretStoreError> {
        let name = name_of(secret_id).to_owned();
        let (to, from) = (to.to_owned(), from.to_owned());
        self.effect(move |s| {
            let versions = s
                .secrets
                .get_mut(&name)
                .ok_or(SecretStoreError::NotFound(name.clone()))?;
            let label = stage.as_str();
            let from_i = versions
                .iter()
                .position(|v| v.id == from && v.stages.iter().any(|l| l == label));
            let to_i = versions.iter().position(|v| v.id == to);
            let (Some(from_i), Some(to_i)) = (from_i, to_i) else {
                return Err(SecretStoreError::Refused(format!(
                    "{label} is not on {from}"
                )));
            };
            versions[from_i].stages.retain(|l| l != label);
            versions[to_i].stages.push(label.into());
            if stage == Stage::Current {
                for v in versions.iter_mut() {
                    v.stages.retain(|l| l != "AWSPREVIOUS");
                }
                versions[from_i].stages.push("AWSPREVIOUS".into());
            }
            Ok(())
        })
        .map_err(SecretStoreError::Unavailable)?
    }

    async fn remove_stage(
        &self,
        secret_id: &str,
        stage: Stage,
        from: &str,
    ) -> Result<(), SecretStoreError> {
        let name = name_of(secret_id).to_owned();
        let from = from.to_owned();
        self.effect(move |s| {
            let versions = s
                .secrets
                .get_mut(&name)
                .ok_or(SecretStoreError::NotFound(name.clone()))?;
            let v = versions
                .iter_mut()
                .find(|v| v.id == from && v.stages.iter().any(|l| l == stage.as_str()))
                .ok_or_else(|| {
                    SecretStoreError::Refused(format!("{} is not on {from}", stage.as_str()))
                })?;
            v.stages.retain(|l| l != stage.as_str());
            Ok(())
        })
        .map_err(SecretStoreError::Unavailable)?
    }
}

#[async_trait]
impl RecordStore for World {
    async fn acquire(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
        take_over: Option<&LeaseSeen>,
    ) -> Result<Acquired, RecordStoreError> {
        let sent_at = tokio::time::Instant::now();
        let mut s = self.alive().map_err(RecordStoreError::Unavailable)?;
        let period = s.periods.get(key).copied().unwrap_or(ttl);
        let entry = s
            .leases
            .entry(key.to_owned())
            .or_insert((String::new(), 0, 0, None));
        let free = entry.0.is_empty() || entry.0 == owner;
        let unchanged = take_over.is_some_and(|seen| {
            seen.owner == entry.0 && seen.fence == entry.2 && seen.expires_hint_ms == entry.1
        });
        if !free && !unchanged {
            return Ok(Acquired::Held {
                seen: LeaseSeen {
                    owner: entry.0.clone(),
                    fence: entry.2,
                    expires_hint_ms: entry.1,
                    beat: 0,
                    ttl: period,
                },
                record: entry.3.clone().map(Box::new),
            });
        }
        entry.0 = owner.to_owned();
        entry.1 = (entry.1 + 1).max(SystemClock.now_ms() + ttl.as_millis() as u64);
        entry.2 += 1;
        let granted = Acquired::Granted {
            lease: Lease {
                key: key.to_owned(),
                owner: owner.to_owned(),
                fence: entry.2,
                sent_at,
            },
            record: entry.3.clone().map(Box::new),
        };
        s.periods.insert(key.to_owned(), ttl);
        Ok(granted)
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<(), RecordStoreError> {
        let mut s = self.alive().map_err(RecordStoreError::Unavailable)?;
        let entry = s
            .leases
            .get_mut(&lease.key)
            .ok_or(RecordStoreError::Fenced(lease.fence))?;
        if entry.2 != lease.fence || entry.0 != lease.owner {
            return Err(RecordStoreError::Fenced(lease.fence));
        }
        entry.1 = (entry.1 + 1).max(SystemClock.now_ms() + ttl.as_millis() as u64);
        Ok(())
    }

    async fn save(&self, lease: &Lease, record: &StepRecord) -> Result<(), RecordStoreError> {
        let (key, fence, record) = (lease.key.clone(), lease.fence, record.clone());
        self.effect(move |s| {
            let entry = s
                .leases
                .get_mut(&key)
                .ok_or(RecordStoreError::Fenced(fence))?;
            if entry.2 != fence {
                return Err(RecordStoreError::Fenced(fence));
            }
            let mut record = record;
            record.keep_marks(entry.3.as_ref());
            entry.3 = Some(record);
            Ok(())
        })
        .map_err(RecordStoreError::Unavailable)?
    }

    async fn claim_user(
        &self,
        user_key: &str,
        claim: &UserClaim,
        replacing: Option<&UserClaim>,
    ) -> Result<Claimed, RecordStoreError> {
        let (key, claim, replacing) = (user_key.to_owned(), claim.clone(), replacing.cloned());
        self.effect(move |s| match s.claims.get(&key) {
            Some(held) if held.secret != claim.secret && Some(held) != replacing.as_ref() => {
                Claimed::HeldBy(held.clone())
            }
            _ => {
                let in_use_by = s
                    .in_use
                    .get(&key)
                    .map(|set| set.iter().cloned().collect())
                    .unwrap_or_default();
                s.claims.insert(key, claim);
                Claimed::Ours { in_use_by }
            }
        })
        .map_err(RecordStoreError::Unavailable)
    }

    async fn mark_in_use(&self, user_key: &str, secret: &str) -> Result<(), RecordStoreError> {
        let (key, secret) = (user_key.to_owned(), secret.to_owned());
        self.effect(move |s| {
            s.in_use.entry(key).or_default().insert(secret);
        })
        .map_err(RecordStoreError::Unavailable)
    }

    async fn release(&self, lease: &Lease) -> Result<(), RecordStoreError> {
        let mut s = self.alive().map_err(RecordStoreError::Unavailable)?;
        if let Some(entry) = s.leases.get_mut(&lease.key) {
            if entry.2 == lease.fence {
                entry.0.clear();
            }
        }
        Ok(())
    }

    async fn unmark(&self, user_key: &str, secret: &str) -> Result<(), RecordStoreError> {
        let mut s = self.alive().map_err(RecordStoreError::Unavailable)?;
        if let Some(set) = s.in_use.get_mut(user_key) {
            set.remove(secret);
        }
        if let Some(record) = s.leases.get_mut(secret).and_then(|l| l.3.as_mut()) {
            record.marked.retain(|m| m != user_key);
        }
        Ok(())
    }

    async fn user_marks(
        &self,
        user_key: &str,
    ) -> Result<(Option<UserClaim>, Vec<String>), RecordStoreError> {
        let s = self.alive().map_err(RecordStoreError::Unavailable)?;
        let marks = s
            .in_use
            .get(user_key)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        Ok((s.claims.get(user_key).cloned(), marks))
    }

    async fn forget(&self, secret: &str) -> Result<Vec<String>, RecordStoreError> {
        let mut s = self.alive().map_err(RecordStoreError::Unavailable)?;
        let mut keys = std::collections::BTreeSet::new();
        for (key, set) in &mut s.in_use {
            if set.remove(secret) {
                keys.insert(key.clone());
            }
        }
        s.claims.retain(|key, claim| {
            let ours = claim.secret == secret;
            if ours {
                keys.insert(key.clone());
            }
            !ours
        });
        if let Some(record) = s.leases.get_mut(secret).and_then(|l| l.3.as_mut()) {
            record.marked.clear();
        }
        Ok(keys.into_iter().collect())
    }

    async fn load(&self, key: &str) -> Result<Option<StepRecord>, RecordStoreError> {
        let s = self.alive().map_err(RecordStoreError::Unavailable)?;
        Ok(s.leases.get(key).and_then(|l| l.3.clone()))
    }
}

impl World {
    /// The stand-in proxy (host "proxy") checks the client's password against the user's proxy
    /// secret, then logs in to the database with that secret.
    fn login_ok(s: &State, at: &Endpoint, creds: &Credentials) -> bool {
        let pw = creds.password.expose_secret();
        let in_db = s.db.get(&creds.username).is_some_and(|p| p == pw);
        if at.host != "proxy" {
            return in_db;
        }
        if s.proxy_frozen {
            return false;
        }
        let proxy_pw = s.secrets.iter().find_map(|(_, versions)| {
            let current = versions
                .iter()
                .find(|v| v.stages.iter().any(|l| l == "AWSCURRENT"))?;
            let v: Value = serde_json::from_str(&current.value).ok()?;
            let is_proxy_secret = v.get("rotation_usernames").is_none() && v.get("host").is_none();
            (is_proxy_secret && v["username"] == creds.username.as_str())
                .then(|| v["password"].as_str().unwrap_or_default().to_owned())
        });
        in_db && proxy_pw.as_deref() == Some(pw)
    }
}

#[async_trait]
impl Database for World {
    async fn check_login(
        &self,
        _engine: Engine,
        at: &Endpoint,
        creds: &Credentials,
    ) -> Result<(), DbError> {
        let s = self.alive().map_err(|reason| DbError::Unreachable {
            at: at.to_string(),
            reason,
        })?;
        if World::login_ok(&s, at, creds) {
            Ok(())
        } else {
            Err(DbError::LoginRejected(creds.username.clone()))
        }
    }

    async fn login(
        &self,
        _engine: Engine,
        at: &Endpoint,
        login: &Credentials,
    ) -> Result<Box<dyn DbSession>, DbError> {
        let s = self.alive().map_err(|reason| DbError::Unreachable {
            at: at.to_string(),
            reason,
        })?;
        if s.unreachable_hosts.contains(&at.host) {
            return Err(DbError::Unreachable {
                at: at.to_string(),
                reason: "connection timed out".into(),
            });
        }
        if !World::login_ok(&s, at, login) {
            return Err(DbError::LoginRejected(login.username.clone()));
        }
        Ok(Box::new(FakeSession {
            world: self.clone(),
            at: at.clone(),
            login_user: login.username.clone(),
        }))
    }

    async fn privileges(
        &self,
        engine: Engine,
        at: &Endpoint,
        login: &Credentials,
        _user: &str,
    ) -> Result<Vec<String>, DbError> {
        self.check_login(engine, at, login).await?;
        Ok(vec!["member of app_role".into()])
    }
}

/// A login to the fake database: only the user itself, or "master", may change a password.
struct FakeSession {
    world: World,
    at: Endpoint,
    login_user: String,
}

#[async_trait]
impl DbSession for FakeSession {
    async fn set_password(&mut self, user: &str, password: &SecretString) -> Result<(), DbError> {
        if self.login_user != user && self.login_user != "master" {
            return Err(DbError::NotPermitted("permission denied".into()));
        }
        if self.world.state().read_only {
            return Err(DbError::ReadOnly {
                at: self.at.to_string(),
                writer: None,
            });
        }
        let (user, password) = (user.to_owned(), password.expose_secret().to_owned());
        self.world
            .effect(move |s| {
                s.password_changes.push(user.clone());
                s.db.insert(user, password);
            })
            .map_err(|reason| DbError::Unreachable {
                at: self.at.to_string(),
                reason,
            })
    }

    /// One server under every name.
    async fn identity(&mut self) -> Result<ServerIdentity, DbError> {
        Ok(ServerIdentity {
            key: "fake:1".into(),
            detail: "the fake database".into(),
        })
    }

    async fn preflight(&mut self) -> Result<crate::rotation::ports::PasswordRules, DbError> {
        let s = self.world.state();
        if s.read_only {
            return Err(DbError::ReadOnly {
                at: self.at.to_string(),
                writer: Some("writer:5432".into()),
            });
        }
        Ok(s.rules.clone())
    }

    /// Anyone may list them, unless `accounts_hidden`.
    async fn accounts(&mut self, user: &str) -> Result<Accounts, DbError> {
        let s = self.world.state();
        if s.accounts_hidden && self.login_user != "master" {
            return Ok(Accounts::Unlisted {
                logged_in_as: format!(
                    "{}@{}",
                    self.login_user,
                    s.logged_in_host.as_deref().unwrap_or("%")
                ),
            });
        }
        Ok(Accounts::Listed(
            s.accounts
                .get(user)
                .cloned()
                .unwrap_or_else(|| vec!["%".into()]),
        ))
    }

    async fn recent_sessions(
        &mut self,
        user: &str,
        _within: std::time::Duration,
        _mine: &[u64],
    ) -> Result<Vec<crate::rotation::ports::SessionGroup>, DbError> {
        let s = self.world.state();
        if let Some(on_reader) = s.reader_sessions.get(&self.at.host) {
            return Ok(on_reader.clone());
        }
        Ok(s.sessions.get(user).cloned().unwrap_or_default())
    }
}

#[async_trait]
impl Reporter for World {
    async fn report(&self, report: &RotationReport) {
        self.state().reports.push(report.clone());
    }
}

#[async_trait]
impl RdsDirectory for World {
    async fn topology(&self, _db: &RdsDb) -> Result<Option<RdsTopology>, RdsError> {
        let mut s = self.state();
        s.rds_calls += 1;
        s.rds.clone().transpose()
    }
}
