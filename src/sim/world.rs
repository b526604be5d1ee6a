//! The modelled services, with the semantics AWS documents (not moto's), and the invariants
//! checked after every event. One `World` per run, behind one lock: every service call is
//! atomic, as DynamoDB's conditional writes are.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::rngs::StdRng;
use serde_json::{json, Value};

use crate::rotation::ports::{
    Acquired, Claimed, LeaseSeen, RecordStoreError, SecretMeta, SecretStoreError, SecretVersion,
    Stage, UserClaim,
};
use crate::rotation::record::{parse_elsewhere, BeginIf, State, StepRecord};

/// The same `rand` generator the run's faults and schedule come from.
pub type Rng = StdRng;

/// A secret's lifecycle state, as reads see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    No,
    /// Scheduled for deletion: reads answer InvalidRequestException.
    Scheduled,
    /// Purged: ResourceNotFoundException.
    Gone,
}

#[derive(Debug, Clone)]
pub struct Version {
    pub id: String,
    /// `None`: the value-less version RotateSecret labels AWSPENDING before createSecret.
    pub value: Option<String>,
    pub labels: Vec<String>,
    /// The value's username and password, read once (the invariants look at them often).
    pub login: Option<(String, String)>,
}

impl Version {
    pub fn new(id: &str, value: Option<String>, labels: Vec<String>) -> Self {
        let login = value.as_deref().and_then(login_of);
        Self {
            id: id.to_owned(),
            value,
            labels,
            login,
        }
    }

    pub fn holds(&self, user: &str, password: &str) -> bool {
        self.login
            .as_ref()
            .is_some_and(|(u, p)| u == user && p == password)
    }
}

fn login_of(raw: &str) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(raw).ok()?;
    Some((str_of(&v, "username"), str_of(&v, "password")))
}

#[derive(Debug, Clone)]
pub struct Secret {
    pub name: String,
    pub versions: Vec<Version>,
    pub deletion: Deletion,
    /// Reads and writes of this secret are denied (a key or resource policy).
    pub denied: bool,
    pub rotation_lambda: Option<String>,
    /// The pair it rotates, and where passwords change (its `direct_host`).
    pub users: Vec<String>,
    pub direct: String,
}

impl Secret {
    pub fn arn(&self) -> String {
        format!("arn:sim:{}", self.name)
    }

    pub fn labelled(&self, label: &str) -> Option<&Version> {
        self.versions
            .iter()
            .find(|v| v.labels.iter().any(|l| l == label))
    }

    /// The JSON value of the version labelled `label`.
    pub fn value_at(&self, label: &str) -> Option<Value> {
        let v = self.labelled(label)?;
        serde_json::from_str(v.value.as_deref()?).ok()
    }

    pub fn version(&self, id: &str) -> Option<&Version> {
        self.versions.iter().find(|v| v.id == id)
    }
}

/// One DynamoDB item: the lease and the record of one secret.
#[derive(Debug, Clone, Default)]
pub struct Item {
    pub owner: String,
    pub hint_ms: u64,
    pub fence: u64,
    pub beat: u64,
    pub ttl: Duration,
    pub record: Option<StepRecord>,
}

/// A database server: what it says it is, its users' passwords, its sessions.
#[derive(Debug, Clone, Default)]
pub struct Server {
    pub id: String,
    pub passwords: BTreeMap<String, String>,
    /// user -> (application, last statement, ms of true time)
    pub sessions: BTreeMap<String, BTreeMap<String, u64>>,
}

/// RDS Proxy: one secret per user, a cache of it re-read after `refresh_ms`, and pooled backend
/// connections that outlive a password change.
#[derive(Debug, Clone, Default)]
pub struct Proxy {
    pub host: String,
    /// user -> (password, when read)
    pub cache: BTreeMap<String, (String, u64)>,
    pub refresh_ms: u64,
    /// Never re-reads its secrets while this is set (a fault).
    pub frozen: bool,
    /// user -> when its pooled backend connection was last used
    pub pool: BTreeMap<String, u64>,
}

/// How long RDS Proxy keeps an idle pooled backend connection, in this model.
const POOL_IDLE_MS: u64 = 30 * 60 * 1000;

#[derive(Debug, Default)]
pub struct World {
    pub secrets: BTreeMap<String, Secret>,
    pub items: BTreeMap<String, Item>,
    pub claims: BTreeMap<String, UserClaim>,
    pub marks: BTreeMap<String, BTreeSet<String>>,
    pub servers: Vec<Server>,
    /// host name -> server
    pub names: BTreeMap<String, usize>,
    pub proxy: Proxy,
    /// The true time, ms since the run began (every process's clock is some offset of it).
    pub now_ms: u64,
    /// What happened, for a failing seed's report.
    pub trace: Vec<String>,
    pub violations: Vec<String>,
    /// Keep the trace (a sweep runs without, and runs a failing seed again with it).
    pub tracing: bool,
    /// The record store does not check the fence (`Mutant::NoFence`): a stale holder's write
    /// lands, and the invariant that only the lease's holder writes the record breaks.
    pub no_fence: bool,
    /// process -> the lease it believes it holds: (key, fence)
    pub holding: BTreeMap<usize, (String, u64)>,
    /// The tokens Secrets Manager's RotateSecret made: it asks again only for its own.
    pub sm_tokens: BTreeSet<String>,
    pub stats: Stats,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub rotations: u64,
    pub crashes: u64,
    pub faults: u64,
    pub app_logins: u64,
}

fn name_of(id: &str) -> &str {
    id.strip_prefix("arn:sim:").unwrap_or(id)
}

impl World {
    pub fn note(&mut self, line: String) {
        if !self.tracing {
            return;
        }
        let at = self.now_ms as f64 / 1000.0;
        self.trace.push(format!("{at:>9.3}s {line}"));
    }

    pub fn violation(&mut self, what: String) {
        self.note(format!("VIOLATION: {what}"));
        self.violations.push(what);
    }

    // --- Secrets Manager -------------------------------------------------------------------

    fn secret(&self, id: &str) -> Result<&Secret, SecretStoreError> {
        let s = self
            .secrets
            .get(name_of(id))
            .ok_or_else(|| SecretStoreError::NotFound(id.into()))?;
        if s.denied {
            return Err(SecretStoreError::Denied(format!(
                "AccessDeniedException on {id}"
            )));
        }
        match s.deletion {
            Deletion::No => Ok(s),
            Deletion::Gone => Err(SecretStoreError::NotFound(id.into())),
            Deletion::Scheduled => Ok(s),
        }
    }

    fn writable(&mut self, id: &str) -> Result<&mut Secret, SecretStoreError> {
        let deletion = self.secret(id)?.deletion;
        if deletion == Deletion::Scheduled {
            return Err(SecretStoreError::InvalidRequest(format!(
                "{id} is marked for deletion"
            )));
        }
        Ok(self.secrets.get_mut(name_of(id)).expect("checked"))
    }

    pub fn describe(&self, id: &str) -> Result<SecretMeta, SecretStoreError> {
        let s = self.secret(id)?;
        Ok(SecretMeta {
            deleted: s.deletion == Deletion::Scheduled,
            arn: s.arn(),
            versions: s
                .versions
                .iter()
                .filter(|v| !v.labels.is_empty())
                .map(|v| (v.id.clone(), v.labels.clone()))
                .collect(),
            rotation_enabled: s.rotation_lambda.is_some(),
            rotation_lambda: s.rotation_lambda.clone(),
            name: s.name.clone(),
            kms_key_id: None,
            tags: Vec::new(),
        })
    }

    pub fn get(&self, id: &str, stage: Option<Stage>, version: Option<&str>) -> GetAnswer {
        let s = match self.secret(id) {
            Ok(s) => s,
            // The adapter answers a purged secret's read as "no such version".
            Err(SecretStoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if s.deletion == Deletion::Scheduled {
            return Err(SecretStoreError::InvalidRequest(format!(
                "{id} is marked for deletion"
            )));
        }
        let found = match (stage, version) {
            (Some(stage), _) => s.labelled(stage.as_str()),
            (None, Some(v)) => s.version(v),
            (None, None) => None,
        };
        Ok(found.and_then(|v| {
            Some(SecretVersion {
                arn: s.arn(),
                version_id: v.id.clone(),
                stages: v.labels.clone(),
                value: secrecy::SecretString::from(v.value.clone()?),
            })
        }))
    }

    pub fn put(
        &mut self,
        id: &str,
        token: &str,
        value: &str,
        stage: Stage,
    ) -> Result<(), SecretStoreError> {
        let s = self.writable(id)?;
        let label = stage.as_str().to_owned();
        if let Some(v) = s.versions.iter_mut().find(|v| v.id == token) {
            return match &v.value {
                None => {
                    *v = Version::new(token, Some(value.to_owned()), std::mem::take(&mut v.labels));
                    Ok(())
                }
                Some(old) if old == value => Ok(()),
                Some(_) => Err(SecretStoreError::VersionExists(token.into())),
            };
        }
        move_label(s, &label, None);
        s.versions
            .push(Version::new(token, Some(value.to_owned()), vec![label]));
        Ok(())
    }

    pub fn move_stage(
        &mut self,
        id: &str,
        stage: Stage,
        to: &str,
        from: &str,
    ) -> Result<(), SecretStoreError> {
        let s = self.writable(id)?;
        let label = stage.as_str();
        let on_from = s
            .version(from)
            .is_some_and(|v| v.labels.iter().any(|l| l == label));
        if !on_from || s.version(to).is_none() {
            return Err(SecretStoreError::Refused(format!(
                "InvalidParameterException: {label} is not on {from}"
            )));
        }
        move_label(s, label, Some(to));
        Ok(())
    }

    pub fn remove_stage(
        &mut self,
        id: &str,
        stage: Stage,
        from: &str,
    ) -> Result<(), SecretStoreError> {
        let s = self.writable(id)?;
        let label = stage.as_str();
        let v = s
            .versions
            .iter_mut()
            .find(|v| v.id == from && v.labels.iter().any(|l| l == label))
            .ok_or_else(|| {
                SecretStoreError::Refused(format!(
                    "InvalidParameterException: {label} is not on {from}"
                ))
            })?;
        v.labels.retain(|l| l != label);
        Ok(())
    }

    /// RotateSecret with a rotation function: a value-less version named by `token` gets
    /// AWSPENDING, unless a rotation is in progress (then AWS refuses).
    pub fn rotate_secret(&mut self, id: &str, token: &str) -> Result<(), SecretStoreError> {
        let s = self.writable(id)?;
        if let Some(p) = s.labelled("AWSPENDING") {
            if !p.labels.iter().any(|l| l == "AWSCURRENT") && p.id != token {
                return Err(SecretStoreError::InvalidRequest(
                    "a previous rotation isn't complete".into(),
                ));
            }
        }
        self.sm_tokens.insert(token.to_owned());
        let s = self.secrets.get_mut(name_of(id)).expect("checked");
        if s.version(token).is_none() {
            move_label(s, "AWSPENDING", None);
            s.versions
                .push(Version::new(token, None, vec!["AWSPENDING".into()]));
        }
        Ok(())
    }

    // --- DynamoDB ----------------------------------------------------------------------------

    pub fn acquire(
        &mut self,
        key: &str,
        owner: &str,
        ttl: Duration,
        hint_ms: u64,
        take_over: Option<&LeaseSeen>,
    ) -> (Acquired, Option<u64>) {
        let item = self.items.entry(key.to_owned()).or_default();
        let free = item.owner.is_empty() || item.owner == owner;
        let unchanged = take_over.is_some_and(|seen| {
            seen.owner == item.owner && seen.fence == item.fence && seen.beat == item.beat
        });
        if !free && !unchanged {
            return (
                Acquired::Held {
                    seen: seen(item),
                    record: item.record.clone().map(Box::new),
                },
                None,
            );
        }
        grant(item, owner, ttl, hint_ms);
        let fence = item.fence;
        (granted(key, item), Some(fence))
    }

    pub fn begin(
        &mut self,
        key: &str,
        owner: &str,
        ttl: Duration,
        hint_ms: u64,
        record: &StepRecord,
        cond: &BeginIf,
    ) -> (Acquired, Option<u64>) {
        let item = self.items.entry(key.to_owned()).or_default();
        let free = item.owner.is_empty() || item.owner == owner;
        if !free {
            return (
                Acquired::Held {
                    seen: seen(item),
                    record: item.record.clone().map(Box::new),
                },
                None,
            );
        }
        if !cond.allows(item.record.as_ref()) {
            return (
                Acquired::NotBegun {
                    record: item.record.clone().map(Box::new),
                },
                None,
            );
        }
        grant(item, owner, ttl, hint_ms);
        let mut begun = record.clone();
        begun.keep_marks(item.record.as_ref());
        begun.last_success_at = item.record.as_ref().and_then(|r| r.last_success_at);
        item.record = Some(begun.clone());
        let fence = item.fence;
        let Acquired::Granted { lease, .. } = granted(key, item) else {
            unreachable!()
        };
        (
            Acquired::Begun {
                lease,
                record: Box::new(begun),
            },
            Some(fence),
        )
    }

    pub fn renew(
        &mut self,
        key: &str,
        owner: &str,
        fence: u64,
        ttl: Duration,
        hint_ms: u64,
    ) -> Result<(), RecordStoreError> {
        let item = self
            .items
            .get_mut(key)
            .ok_or(RecordStoreError::Fenced(fence))?;
        if item.fence != fence || item.owner != owner {
            return Err(RecordStoreError::Fenced(fence));
        }
        item.beat += 1;
        item.ttl = ttl;
        item.hint_ms = hint_ms;
        Ok(())
    }

    pub fn save(
        &mut self,
        key: &str,
        fence: u64,
        record: &StepRecord,
        release: bool,
    ) -> Result<(), RecordStoreError> {
        let no_fence = self.no_fence;
        let item = self
            .items
            .get_mut(key)
            .ok_or(RecordStoreError::Fenced(fence))?;
        if item.fence != fence {
            if !no_fence {
                return Err(RecordStoreError::Fenced(fence));
            }
            // Only the lease's holder writes the record.
            let now = item.fence;
            self.violation(format!(
                "{key}: a record write under fence {fence} landed while fence {now} holds the lease"
            ));
        }
        let item = self.items.get_mut(key).expect("looked up above");
        let mut stored = record.clone();
        stored.keep_marks(item.record.as_ref());
        item.record = Some(stored);
        if release && item.fence == fence {
            item.owner.clear();
        }
        Ok(())
    }

    pub fn release(&mut self, key: &str, fence: u64) {
        if let Some(item) = self.items.get_mut(key) {
            if item.fence == fence {
                item.owner.clear();
            }
        }
    }

    pub fn claim_user(
        &mut self,
        key: &str,
        claim: &UserClaim,
        replacing: Option<&UserClaim>,
    ) -> Claimed {
        match self.claims.get(key) {
            Some(held) if held.secret != claim.secret && Some(held) != replacing => {
                Claimed::HeldBy(held.clone())
            }
            _ => {
                let in_use_by = self
                    .marks
                    .get(key)
                    .map(|set| set.iter().cloned().collect())
                    .unwrap_or_default();
                self.claims.insert(key.to_owned(), claim.clone());
                Claimed::Ours { in_use_by }
            }
        }
    }

    // --- the database and RDS Proxy --------------------------------------------------------

    pub fn server_at(&self, host: &str) -> Option<usize> {
        self.names.get(host).copied()
    }

    /// A direct login (a statement runs, so the session shows activity).
    pub fn db_login(&mut self, host: &str, user: &str, password: &str, app: &str) -> bool {
        let Some(i) = self.server_at(host) else {
            return false;
        };
        let now = self.now_ms;
        let server = &mut self.servers[i];
        let ok = server.passwords.get(user).is_some_and(|p| p == password);
        // The rotator's logins close at once: no session stays for the guard to see.
        if ok && app != "rotator" {
            server
                .sessions
                .entry(user.to_owned())
                .or_default()
                .insert(app.to_owned(), now);
        }
        ok
    }

    /// A login through the proxy: the client is checked against the proxy's copy of the user's
    /// secret (read again once `refresh_ms` old), and gets a pooled backend connection if one is
    /// alive, or a new one, which needs the database to take that copy's password.
    pub fn proxy_login(&mut self, user: &str, password: &str, app: &str) -> bool {
        let now = self.now_ms;
        let stale = self
            .proxy
            .cache
            .get(user)
            .is_none_or(|(_, read)| now.saturating_sub(*read) >= self.proxy.refresh_ms);
        if stale && !self.proxy.frozen {
            let read = self.proxy_secret_of(user);
            if let Some(pw) = read {
                self.proxy.cache.insert(user.to_owned(), (pw, now));
            }
        }
        let Some((cached, _)) = self.proxy.cache.get(user).cloned() else {
            return false;
        };
        if cached != password {
            return false;
        }
        let pooled = self
            .proxy
            .pool
            .get(user)
            .is_some_and(|used| now.saturating_sub(*used) < POOL_IDLE_MS);
        let host = self.proxy.host.clone();
        let backend = pooled || {
            let i = self.server_at(&host).expect("the proxy's server");
            self.servers[i]
                .passwords
                .get(user)
                .is_some_and(|p| *p == cached)
        };
        if backend && app != "rotator" {
            self.proxy.pool.insert(user.to_owned(), now);
            let i = self.server_at(&host).expect("the proxy's server");
            self.servers[i]
                .sessions
                .entry(user.to_owned())
                .or_default()
                .insert(format!("proxy:{app}"), now);
        }
        backend
    }

    /// The password in the AWSCURRENT version of the proxy secret for `user`.
    fn proxy_secret_of(&self, user: &str) -> Option<String> {
        let s = self.secrets.get(&format!("proxy-{user}"))?;
        if s.deletion != Deletion::No {
            return None;
        }
        let (u, p) = s.labelled("AWSCURRENT")?.login.as_ref()?;
        (u == user).then(|| p.clone())
    }

    // --- invariants --------------------------------------------------------------------------

    /// Checked after every event.
    pub fn check(&mut self) {
        let mut found = Vec::new();
        for s in self.secrets.values() {
            if !s.name.starts_with("app-") || s.deletion != Deletion::No {
                continue;
            }
            // The record agrees with the labels: a finished rotation's version is AWSCURRENT
            // (until the next one finishes, which writes its own record first).
            let record = self.items.get(&s.arn()).and_then(|i| i.record.as_ref());
            let current_id = s.labelled("AWSCURRENT").map(|v| v.id.as_str());
            if let Some(r) = record.filter(|r| r.state == State::Finished) {
                if r.rotation_id.as_deref() != current_id {
                    found.push(format!(
                        "{}: the record says rotation {:?} finished, AWSCURRENT is on {current_id:?}",
                        s.name, r.rotation_id
                    ));
                }
            }
            let Some((user, pw)) = s.labelled("AWSCURRENT").and_then(|v| v.login.clone()) else {
                found.push(format!("{}: no AWSCURRENT", s.name));
                continue;
            };
            let Some(i) = self.server_at(&s.direct) else {
                continue;
            };
            if self.servers[i].passwords.get(&user) != Some(&pw) {
                found.push(format!(
                    "{}: AWSCURRENT ({user}) does not log in at the database",
                    s.name
                ));
            }
            // Every password set can be found again without a master secret, by a rotation of
            // one of the secrets that name the user.
            for user in &s.users {
                let Some(pw) = self.servers[i].passwords.get(user) else {
                    continue;
                };
                let known = self.proxy_secret_of(user).as_deref() == Some(pw.as_str())
                    || self
                        .secrets
                        .values()
                        .filter(|o| o.users.contains(user))
                        .any(|o| {
                            let record = self.items.get(&o.arn()).and_then(|i| i.record.as_ref());
                            self.known(o, record, user, pw)
                        });
                if !known {
                    found.push(format!(
                        "the password of {user} is in no version a rotation reads"
                    ));
                }
            }
        }
        for v in found {
            if !self.violations.contains(&v) {
                self.violation(v);
            }
        }
    }

    fn known(&self, s: &Secret, record: Option<&StepRecord>, user: &str, pw: &str) -> bool {
        let holds = |v: &Version| v.holds(user, pw);
        let labelled = ["AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"]
            .iter()
            .filter_map(|l| s.labelled(l))
            .any(holds);
        let recorded = record.is_some_and(|r| {
            let own = (r.state != State::Finished)
                .then_some(r.rotation_id.as_deref())
                .flatten();
            own.into_iter()
                .chain(r.unfinished_versions.iter().map(String::as_str))
                .filter_map(|entry| match parse_elsewhere(entry) {
                    Some((other, id)) => self.secrets.get(name_of(other))?.version(id),
                    None => s.version(entry),
                })
                .any(holds)
        });
        labelled || recorded
    }

    /// `process` gave back the lease `key` under `fence` (a late write of an earlier lease must
    /// not end the one it holds now).
    pub fn let_go(&mut self, process: usize, key: &str, fence: u64) {
        if self.holding.get(&process) == Some(&(key.to_owned(), fence)) {
            self.holding.remove(&process);
        }
    }

    /// A process changed a password: it must still hold the lease it believes it holds.
    pub fn check_holder(&mut self, process: usize, held: Option<(String, u64)>, user: &str) {
        let Some((key, fence)) = held else {
            self.violation(format!(
                "p{process} changed {user}'s password holding no lease"
            ));
            return;
        };
        // Held still: the same fence, not released.
        let current = self.items.get(&key).map(|i| (i.fence, i.owner.is_empty()));
        if current.is_none_or(|(f, released)| f != fence || released) {
            self.violation(format!(
                "p{process} changed {user}'s password with fence {fence} of {key}, which another process holds now ({current:?})"
            ));
        }
    }
}

type GetAnswer = Result<Option<SecretVersion>, SecretStoreError>;

fn str_of(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

/// Takes `label` off whichever version has it (for AWSCURRENT, that one becomes AWSPREVIOUS)
/// and puts it on `to`.
fn move_label(s: &mut Secret, label: &str, to: Option<&str>) {
    let old = s
        .versions
        .iter()
        .position(|v| v.labels.iter().any(|l| l == label));
    if let Some(i) = old {
        s.versions[i].labels.retain(|l| l != label);
        if label == "AWSCURRENT" {
            for v in s.versions.iter_mut() {
                v.labels.retain(|l| l != "AWSPREVIOUS");
            }
            s.versions[i].labels.push("AWSPREVIOUS".into());
        }
    }
    if let Some(to) = to {
        if let Some(v) = s.versions.iter_mut().find(|v| v.id == to) {
            v.labels.push(label.to_owned());
        }
    }
}

fn seen(item: &Item) -> LeaseSeen {
    LeaseSeen {
        owner: item.owner.clone(),
        fence: item.fence,
        expires_hint_ms: item.hint_ms,
        beat: item.beat,
        ttl: item.ttl,
    }
}

fn grant(item: &mut Item, owner: &str, ttl: Duration, hint_ms: u64) {
    item.owner = owner.to_owned();
    item.fence += 1;
    item.beat = 0;
    item.ttl = ttl;
    item.hint_ms = hint_ms;
}

fn granted(key: &str, item: &Item) -> Acquired {
    Acquired::Granted {
        lease: crate::rotation::ports::Lease {
            key: key.to_owned(),
            owner: item.owner.clone(),
            fence: item.fence,
            sent_at: tokio::time::Instant::now(),
        },
        record: item.record.clone().map(Box::new),
    }
}

/// An application secret of the pair `users` on `host` (its application path) and `direct`
/// (where passwords change), each user with its own proxy secret.
pub fn app_secret(users: [&str; 2], password: &str, host: &str, direct: &str) -> Value {
    json!({
        "engine": "postgres",
        "rotation_usernames": users,
        "proxy_secret_ids": [format!("proxy-{}", users[0]), format!("proxy-{}", users[1])],
        "host": host,
        "port": 5432,
        "dbname": "app",
        "direct_host": direct,
        "username": users[0],
        "password": password,
    })
}
