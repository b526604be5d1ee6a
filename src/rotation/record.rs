//! The step record: what a rotation has done, persisted as it goes (see `Run::drive` for when) so
//! that any process can resume it. It never holds a password; the pending password lives only in the AWSPENDING version
//! whose id is the rotation id.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Serialize, Serializer};

/// The next step to run. Steps run in this order; each one is idempotent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    CreatePending,
    SetPassword,
    UpdateProxy,
    Test,
    Finish,
    Done,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::CreatePending,
        Step::SetPassword,
        Step::UpdateProxy,
        Step::Test,
        Step::Finish,
        Step::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::CreatePending => "create_pending",
            Step::SetPassword => "set_password",
            Step::UpdateProxy => "update_proxy",
            Step::Test => "test",
            Step::Finish => "finish",
            Step::Done => "done",
        }
    }

    pub fn next(self) -> Step {
        match self {
            Step::CreatePending => Step::SetPassword,
            Step::SetPassword => Step::UpdateProxy,
            Step::UpdateProxy => Step::Test,
            Step::Test => Step::Finish,
            Step::Finish | Step::Done => Step::Done,
        }
    }
}

impl FromStr for Step {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Step::ALL
            .into_iter()
            .find(|step| step.as_str() == s)
            .ok_or_else(|| format!("unknown step {s:?}"))
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Step {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    InProgress,
    Finished,
    Failed,
    /// Ended by an operator (`rds-rotator abort`).
    Aborted,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::InProgress => "in_progress",
            State::Finished => "finished",
            State::Failed => "failed",
            State::Aborted => "aborted",
        }
    }
}

impl FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            State::InProgress,
            State::Finished,
            State::Failed,
            State::Aborted,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
        .ok_or_else(|| format!("unknown state {s:?}"))
    }
}

/// A version of another secret, as `unfinished_versions` holds it: the pending version of a
/// rotation of that secret that changed a user both secrets name, and did not finish.
pub fn elsewhere(secret: &str, version: &str) -> String {
    format!("{secret}#{version}")
}

/// `elsewhere`'s (secret, version), when `entry` is one. A secret's ARN has no '#'; a version
/// id (any ClientRequestToken) may.
pub fn parse_elsewhere(entry: &str) -> Option<(&str, &str)> {
    entry
        .split_once('#')
        .filter(|(secret, _)| secret.starts_with("arn:"))
}

/// RFC 3339 in UTC, millisecond precision.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn ser_time<S: Serializer>(ms: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_str(&rfc3339(*ms)),
        None => s.serialize_none(),
    }
}

/// One per secret. `status --json` prints it as is (times as RFC 3339).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepRecord {
    /// The secret's ARN (names are resolved first, so a name and its ARN share one record).
    pub secret_id: String,
    /// The ClientRequestToken of the AWSPENDING version, and so that version's id.
    pub rotation_id: Option<String>,
    pub state: State,
    pub step: Step,
    /// The version that was AWSCURRENT when the rotation began: the compare-and-swap's expected value.
    pub current_version: Option<String>,
    pub current_user: Option<String>,
    pub target_user: Option<String>,
    /// The proxy secret of the target user, when the secret names proxy secrets.
    pub proxy_secret_id: Option<String>,
    /// That proxy secret's AWSCURRENT version when the rotation began: its compare-and-swap's
    /// expected value.
    pub proxy_version: Option<String>,
    /// Pending versions of earlier rotations of the target user that failed or were aborted,
    /// newest first; one of another secret that names the same user is in `elsewhere`'s form.
    /// Such a rotation may have set the password before it stopped, and then only its pending
    /// version knows it, so `set_password` tries them (see `KnownSource`).
    pub unfinished_versions: Vec<String>,
    /// A version that held AWSPENDING while it was AWSCURRENT: the mark a finished rotation
    /// leaves (finish leaves AWSPENDING there unless Secrets Manager's rotation is on). No
    /// rotation is in progress on it, so when an edit moves AWSCURRENT on and strands the label
    /// there, planning takes it over (`begin::left_by_us`). Carried by every record that follows.
    #[serde(default)]
    pub pending_left: Option<String>,
    /// The database users (keys of `lease::user_key`) this secret has marked as in use: a
    /// rotation whose user in use is here does not mark it again (one write less). Kept beside
    /// the record, not in it: the store only adds to it (`keep_marks`), whatever record a write
    /// carries, and `forget` clears it with the marks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub marked: Vec<String>,
    /// The request that started this rotation (SQS message, event or enqueue id): a redelivered
    /// request with the same id does not rotate again.
    pub request_id: Option<String>,
    /// Why it was asked for (free text from the request).
    pub reason: Option<String>,
    /// How many times a process has started or resumed this rotation.
    pub attempts: u32,
    pub last_error: Option<String>,
    /// What the in-use guard last found: sessions of the target user that ran statements, with
    /// when it looked (`None` once it finds none).
    pub in_use: Option<String>,
    /// The target user logged in where passwords are changed, during this rotation: so the test
    /// step also logs in there (some setups let it in only from the application's network).
    #[serde(default)]
    pub database_login_seen: bool,
    #[serde(serialize_with = "ser_time")]
    pub started_at: Option<u64>,
    #[serde(serialize_with = "ser_time")]
    pub updated_at: Option<u64>,
    #[serde(serialize_with = "ser_time")]
    pub finished_at: Option<u64>,
    /// When the last successful rotation of this secret finished; survives later failures.
    #[serde(serialize_with = "ser_time")]
    pub last_success_at: Option<u64>,
    /// External calls of the process that last wrote this record, for this rotation, up to that
    /// write: `Service.Operation` for AWS, `<engine>.connect` for databases.
    pub calls: BTreeMap<String, u64>,
}

/// How many unfinished pending versions a record carries.
const MAX_UNFINISHED: usize = 4;

/// What a rotation starts from, decided before anything is written.
#[derive(Debug, Clone)]
pub struct Plan {
    pub current_version: String,
    pub current_user: String,
    pub target_user: String,
    pub proxy_secret_id: Option<String>,
    pub proxy_version: Option<String>,
    /// AWSPENDING's version, when that is not AWSCURRENT's: a rotation that stopped, ours or
    /// another tool's (`begin::new_rotation` tells which from the record).
    pub pending_version: Option<String>,
    /// AWSCURRENT's version when AWSPENDING is on it too (`StepRecord::pending_left`).
    pub pending_left: Option<String>,
}

impl StepRecord {
    pub fn begin(
        secret_id: &str,
        rotation_id: String,
        plan: Plan,
        previous: Option<&StepRecord>,
        now: u64,
    ) -> Self {
        let target = plan.target_user.clone();
        Self {
            secret_id: secret_id.to_owned(),
            rotation_id: Some(rotation_id),
            state: State::InProgress,
            step: Step::CreatePending,
            current_version: Some(plan.current_version),
            current_user: Some(plan.current_user),
            target_user: Some(plan.target_user),
            proxy_secret_id: plan.proxy_secret_id,
            proxy_version: plan.proxy_version,
            unfinished_versions: previous
                .map(|p| p.unfinished_for(&target))
                .unwrap_or_default(),
            pending_left: plan
                .pending_left
                .or_else(|| previous.and_then(|p| p.left_pending().map(str::to_owned))),
            marked: previous.map(|p| p.marked.clone()).unwrap_or_default(),
            request_id: None,
            reason: None,
            attempts: 1,
            last_error: None,
            in_use: None,
            database_login_seen: false,
            started_at: Some(now),
            updated_at: Some(now),
            finished_at: None,
            last_success_at: previous.and_then(|p| p.last_success_at),
            calls: BTreeMap::new(),
        }
    }

    /// A rotation that could not even begin (bad secret, unknown user, ...).
    pub fn failed_to_begin(
        secret_id: &str,
        reason: String,
        previous: Option<&StepRecord>,
        now: u64,
    ) -> Self {
        Self {
            secret_id: secret_id.to_owned(),
            rotation_id: None,
            state: State::Failed,
            step: Step::CreatePending,
            current_version: None,
            current_user: None,
            target_user: None,
            proxy_secret_id: None,
            proxy_version: None,
            // Nothing changed this time: what the earlier ones left is still to be known.
            unfinished_versions: previous
                .map(|p| p.unfinished_for(p.target_user.as_deref().unwrap_or_default()))
                .unwrap_or_default(),
            pending_left: previous.and_then(|p| p.left_pending().map(str::to_owned)),
            marked: previous.map(|p| p.marked.clone()).unwrap_or_default(),
            request_id: None,
            reason: None,
            attempts: previous
                .filter(|p| p.state == State::Failed && p.rotation_id.is_none())
                .map_or(1, |p| p.attempts + 1),
            last_error: Some(reason),
            in_use: None,
            database_login_seen: false,
            started_at: Some(now),
            updated_at: Some(now),
            finished_at: Some(now),
            last_success_at: previous.and_then(|p| p.last_success_at),
            calls: BTreeMap::new(),
        }
    }

    pub fn is_in_progress(&self) -> bool {
        self.state == State::InProgress
    }

    /// What a store keeps of `marked` when it writes this record over `stored`: both (a mark,
    /// once made, stays until `forget`).
    pub fn keep_marks(&mut self, stored: Option<&StepRecord>) {
        for key in stored.map(|s| s.marked.as_slice()).unwrap_or_default() {
            if !self.marked.contains(key) {
                self.marked.push(key.clone());
            }
        }
    }

    /// Where AWSPENDING may stay without a rotation in progress: the version this rotation made
    /// AWSCURRENT, once finished, or the one an earlier record knew (`pending_left`).
    pub fn left_pending(&self) -> Option<&str> {
        (self.state == State::Finished)
            .then_some(self.rotation_id.as_deref())
            .flatten()
            .or(self.pending_left.as_deref())
    }

    /// Ended without moving AWSCURRENT: failed or aborted.
    pub fn is_unfinished(&self) -> bool {
        matches!(self.state, State::Failed | State::Aborted)
    }

    /// The pending versions that may hold `target`'s password after this record: its own, if
    /// it ended unfinished with `target` as its target, and those it carried. At any step, even
    /// create_pending: no record is written at set_password, so a change can land while the
    /// stored record still says create_pending (the process killed, a later write refused). A
    /// version that was never written costs one read.
    pub fn unfinished_for(&self, target: &str) -> Vec<String> {
        let own = (self.is_unfinished() && self.target_user.as_deref() == Some(target))
            .then(|| self.rotation_id.clone())
            .flatten()
            .filter(|_| {
                !(crate::mutants::on(crate::mutants::Mutant::ForgetsUnsavedPassword)
                    && self.step == Step::CreatePending)
            });
        // Past set_password the own version surely holds the password; at it, or before it, it
        // may (no record is written at set_password) or not: it comes last, and never pushes out
        // a carried one.
        let (first, last) = if self.step > Step::SetPassword {
            (own, None)
        } else {
            (None, own)
        };
        let mut out: Vec<String> = first.into_iter().collect();
        if self.target_user.is_none() || self.target_user.as_deref() == Some(target) {
            out.extend(self.unfinished_versions.iter().cloned());
        }
        // The newest few: each one costs a read when the others fail.
        let mut seen = std::collections::HashSet::new();
        out.retain(|v| seen.insert(v.clone()));
        out.truncate(MAX_UNFINISHED);
        out.extend(last.filter(|v| !seen.contains(v)));
        out
    }

    pub fn advance(&mut self, to: Step, now: u64) {
        self.step = to;
        self.updated_at = Some(now);
        self.last_error = None;
        if to == Step::Done {
            self.state = State::Finished;
            self.finished_at = Some(now);
            self.last_success_at = Some(now);
        }
    }

    pub fn resumed(&mut self, now: u64) {
        self.attempts += 1;
        self.updated_at = Some(now);
    }

    /// A failed rotation that runs again where it stopped (Secrets Manager retries it).
    pub fn retried(&mut self, now: u64) {
        self.state = State::InProgress;
        self.finished_at = None;
        self.resumed(now);
    }

    pub fn note_error(&mut self, reason: String, fatal: bool, now: u64) {
        self.last_error = Some(reason);
        self.updated_at = Some(now);
        if fatal {
            self.state = State::Failed;
            self.finished_at = Some(now);
        }
    }
}

/// When a new rotation may begin without reading the record first. The store checks it in the
/// same write that takes the lease (`RecordStore::begin`), so a plain rotation costs one write
/// instead of two. The rules are `begin::decide`'s: no rotation in progress (that one is resumed),
/// labels not stale, and no reason to skip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginIf {
    /// AWSCURRENT as the plan read it: a finished or failed record of another rotation id means
    /// the labels may have moved since.
    pub current_version: String,
    /// A record of this request means it was handled already.
    pub request_id: Option<String>,
    /// The minimum interval: the last success must be no later than this (ms since the epoch).
    pub last_success_by: Option<u64>,
}

impl BeginIf {
    pub fn allows(&self, existing: Option<&StepRecord>) -> bool {
        let Some(r) = existing else {
            return true;
        };
        !r.is_in_progress()
            && r.rotation_id
                .as_ref()
                .is_none_or(|id| *id == self.current_version)
            // The new record must carry these on (`StepRecord::begin`), and the write that takes
            // the lease cannot copy them from the old one: `begin::decide` begins such a rotation.
            && r.unfinished_versions.is_empty()
            && (self.request_id.is_none() || r.request_id != self.request_id)
            && match (self.last_success_by, r.last_success_at) {
                (Some(by), Some(last)) => last <= by,
                _ => true,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            current_version: "v0".into(),
            current_user: "a".into(),
            target_user: "b".into(),
            proxy_secret_id: None,
            proxy_version: None,
            pending_version: None,
            pending_left: None,
        }
    }

    #[test]
    fn steps_round_trip_through_their_names_and_advance_in_order() {
        for step in Step::ALL {
            assert_eq!(step.as_str().parse::<Step>().unwrap(), step);
        }
        let mut s = Step::CreatePending;
        let mut seen = vec![s];
        while s != Step::Done {
            s = s.next();
            seen.push(s);
        }
        assert_eq!(seen, Step::ALL);
    }

    #[test]
    fn rotations_failed_at_create_pending_never_push_out_a_version_that_holds_a_password() {
        // One rotation failed past set_password: its version holds b's password.
        let mut r = StepRecord::begin("arn", "holds".into(), plan(), None, 0);
        r.step = Step::UpdateProxy;
        r.state = State::Failed;
        // Then five in a row failed at create_pending (refused before AWSPENDING, say).
        for i in 0..5 {
            let mut next = StepRecord::begin("arn", format!("empty-{i}"), plan(), Some(&r), 0);
            next.state = State::Failed;
            r = next;
        }
        let known = r.unfinished_for("b");
        assert_eq!(known[0], "holds", "{known:?}");
        assert_eq!(
            known.last().map(String::as_str),
            Some("empty-4"),
            "{known:?}"
        );
        assert!(known.len() <= MAX_UNFINISHED + 1, "{known:?}");
    }

    #[test]
    fn finishing_marks_the_record_finished_and_remembers_the_success() {
        let mut r = StepRecord::begin("arn", "r1".into(), plan(), None, 10);
        r.note_error("slow".into(), false, 11);
        assert_eq!(r.state, State::InProgress);
        r.advance(Step::Done, 20);
        assert_eq!(r.state, State::Finished);
        assert_eq!(
            (r.finished_at, r.last_success_at, r.last_error.clone()),
            (Some(20), Some(20), None)
        );
        let failed = StepRecord::failed_to_begin("arn", "bad".into(), Some(&r), 30);
        assert_eq!(failed.last_success_at, Some(20));
        assert_eq!(failed.state, State::Failed);
    }

    #[test]
    fn status_json_has_the_documented_fields() {
        let r = StepRecord::begin("arn", "r1".into(), plan(), None, 0);
        let v = serde_json::to_value(&r).unwrap();
        for key in [
            "secret_id",
            "rotation_id",
            "state",
            "step",
            "target_user",
            "attempts",
            "last_error",
            "started_at",
            "updated_at",
            "finished_at",
        ] {
            assert!(v.get(key).is_some(), "{key} missing");
        }
        assert_eq!(v["state"], "in_progress");
        assert_eq!(v["step"], "create_pending");
        assert_eq!(v["started_at"], "1970-01-01T00:00:00.000Z");
    }
}
