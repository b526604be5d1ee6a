//! What every test pair offers, whatever its engine, and Secrets Manager helpers.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use aws_sdk_secretsmanager::Client as Sm;
use serde_json::{json, Value};

use super::BIN;

/// What every test pair offers, whatever its engine: the binary configured for it, and its
/// secrets as Secrets Manager holds them.
pub trait Harness {
    fn sm(&self) -> &Sm;
    fn app_secret_id(&self) -> &str;
    fn table_name(&self) -> &str;

    /// The binary, configured for this pair's table and the local stack.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("ROTATOR_TABLE", self.table_name())
            .env("ROTATOR_DB_TLS", "disable")
            .env("ROTATOR_TEST_DEADLINE", "20s")
            // The protocol tests rotate back to back, with their own clients logging in as both
            // users: the minimum interval would skip them, and the in-use guard would (rightly)
            // wait. tests/client_caches.rs runs both as production has them.
            .env("ROTATOR_MIN_INTERVAL", "0s")
            // The local databases answer in milliseconds. The bound is also what a killed
            // process's lease asks a taker to wait beyond the lease (`takeover_period`).
            .env("ROTATOR_DB_TIMEOUT", "2s")
            .env("ROTATOR_IN_USE", "warn")
            .env_remove("ROTATOR_TEST_FAILPOINTS")
            .env_remove("RUST_LOG");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("the binary runs")
    }

    fn rotate(&self) -> Output {
        self.run(&["rotate", self.app_secret_id()])
    }

    fn status(&self) -> Value {
        let out = self.run(&["status", self.app_secret_id(), "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json prints one JSON object")
    }

    /// The step record, or `None` before the first rotation.
    fn try_status(&self) -> Option<Value> {
        let out = self.run(&["status", self.app_secret_id(), "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("status --json prints JSON"))
    }

    /// Starts `rds-rotator rotate` with a failpoint that pauses it, waits until it gets there and
    /// returns the paused process, ready to be killed. A run that stepped back because its lease
    /// may have run out (on a loaded machine a renewal can take longer than a short test lease)
    /// did what it must, changed nothing it cannot resume, and is started again: at most twice.
    fn rotate_until(&self, failpoint: &str, lease: &str) -> Child {
        let mut seen = String::new();
        for _ in 0..3 {
            let mut child = self
                .command(&["rotate", self.app_secret_id()])
                .env("ROTATOR_TEST_FAILPOINTS", format!("{failpoint}=pause"))
                .env("ROTATOR_LEASE_DURATION", lease)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("the binary starts");
            let stderr = child.stderr.take().unwrap();
            seen.clear();
            for line in BufReader::new(stderr).lines() {
                let line = line.unwrap();
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(&format!("failpoint {failpoint} reached")) {
                    return child;
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            if !seen.contains("lease lost; leaving the record") {
                break;
            }
            eprintln!("rotate stepped back (lease) before failpoint {failpoint}; again");
        }
        panic!("rotate exited before failpoint {failpoint}:\n{seen}");
    }

    async fn secret_at(&self, id: &str, stage: &str) -> Option<Value> {
        match self
            .sm()
            .get_secret_value()
            .secret_id(id)
            .version_stage(stage)
            .send()
            .await
        {
            Ok(out) => Some(serde_json::from_str(out.secret_string().unwrap()).unwrap()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                None
            }
            Err(e) => panic!("GetSecretValue {id} {stage}: {e:?}"),
        }
    }

    /// Writes a new AWSCURRENT of the application secret with `change` applied.
    async fn edit_app_secret(&self, change: impl FnOnce(&mut Value) + Send) {
        let mut app = self.current().await;
        change(&mut app);
        self.sm()
            .put_secret_value()
            .secret_id(self.app_secret_id())
            .secret_string(app.to_string())
            .send()
            .await
            .unwrap();
    }

    /// A master secret with these credentials, named by the application secret.
    async fn add_master(&self, username: &str, password: &str) {
        let arn = self
            .sm()
            .create_secret()
            .name(format!("{}/master", self.app_secret_id()))
            .secret_string(json!({"username": username, "password": password}).to_string())
            .send()
            .await
            .unwrap()
            .arn
            .unwrap();
        self.edit_app_secret(|app| app["master_secret_id"] = json!(arn))
            .await;
    }

    async fn current(&self) -> Value {
        self.secret_at(self.app_secret_id(), "AWSCURRENT")
            .await
            .expect("AWSCURRENT exists")
    }

    /// version id -> labels
    async fn versions(&self, id: &str) -> Vec<(String, Vec<String>)> {
        let out = self
            .sm()
            .describe_secret()
            .secret_id(id)
            .send()
            .await
            .unwrap();
        let mut v: Vec<_> = out
            .version_ids_to_stages()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    async fn version_with(&self, id: &str, stage: &str) -> Option<String> {
        self.versions(id)
            .await
            .into_iter()
            .find(|(_, l)| l.iter().any(|l| l == stage))
            .map(|(v, _)| v)
    }

    /// What a rotation to `user` promises in Secrets Manager: AWSCURRENT holds `user`, AWSPREVIOUS
    /// the other user, its proxy secret the same password, the extra key is kept, and AWSPENDING
    /// is on AWSCURRENT's version or nowhere. Returns AWSCURRENT, for the engine's own login
    /// checks.
    async fn assert_secrets_rotated_to(&self, user: &str, proxy_secret: &str) -> Value {
        let current = self.current().await;
        assert_eq!(current["username"], user, "AWSCURRENT holds the wrong user");
        if let Some(previous) = self.secret_at(self.app_secret_id(), "AWSPREVIOUS").await {
            assert_ne!(previous["username"], user);
        }
        let proxy = self.secret_at(proxy_secret, "AWSCURRENT").await.unwrap();
        assert_eq!(proxy["username"], user);
        assert_eq!(
            proxy["password"], current["password"],
            "the proxy secret holds AWSCURRENT's password"
        );
        assert_eq!(current["owner_team"], "payments", "the extra key is kept");
        let current_version = self.version_with(self.app_secret_id(), "AWSCURRENT").await;
        let pending = self.version_with(self.app_secret_id(), "AWSPENDING").await;
        assert!(
            pending.is_none() || pending == current_version,
            "AWSPENDING left on {pending:?}"
        );
        current
    }

    /// The distinct passwords of every version (deprecated ones included) of these secrets.
    async fn passwords_in(&self, ids: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for id in ids {
            let listed = self
                .sm()
                .list_secret_version_ids()
                .secret_id(id)
                .include_deprecated(true)
                .max_results(100)
                .send()
                .await
                .unwrap();
            for v in listed.versions() {
                // A version without a value: Secrets Manager's, before createSecret fills it in.
                let Ok(value) = self
                    .sm()
                    .get_secret_value()
                    .secret_id(id)
                    .version_id(v.version_id().unwrap())
                    .send()
                    .await
                else {
                    continue;
                };
                let json: Value = serde_json::from_str(value.secret_string().unwrap()).unwrap();
                let pw = json["password"].as_str().unwrap().to_owned();
                if !out.contains(&pw) {
                    out.push(pw);
                }
            }
        }
        out
    }
}

/// Attaches Secrets Manager's own rotation to `id`, every 30 days, as the tool this replaces or
/// AWS's rotation functions leave it. Returns the version RotateSecret labelled AWSPENDING.
pub async fn attach_managed_rotation(sm: &Sm, id: &str) -> String {
    sm.rotate_secret()
        .secret_id(id)
        .rotation_rules(
            aws_sdk_secretsmanager::types::RotationRulesType::builder()
                .automatically_after_days(30)
                .build(),
        )
        .rotate_immediately(false)
        .send()
        .await
        .expect("the stack answers RotateSecret with RotationRules")
        .version_id()
        .expect("RotateSecret names its version")
        .to_owned()
}
