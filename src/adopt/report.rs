//! What adopt did, or would do (`--dry-run`), and how to attach the proxy secrets to RDS Proxy.

use serde_json::{json, Value};

use super::ports::ProxyAuth;
use crate::secret::Engine;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Complete,
    Update,
    Reuse,
    Nothing,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Complete => "complete",
            Action::Update => "update",
            Action::Reuse => "reuse",
            Action::Nothing => "already done",
        }
    }
}

#[derive(Debug, Clone)]
pub struct StepReport {
    pub step: &'static str,
    pub action: Action,
    pub detail: String,
    /// Statements, with the password's place marked, never filled.
    pub sql: Vec<String>,
}

/// How to attach the proxy secrets to RDS Proxy, or why there is nothing to attach.
#[derive(Debug, Clone, Default)]
pub struct Attach {
    /// Users whose proxy secret the proxy's Auth list lacks (all of them without `--proxy`).
    pub missing: Vec<String>,
    pub cli: Option<String>,
    pub terraform: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Adoption {
    pub secret: String,
    pub engine: Engine,
    pub user: String,
    pub clone: String,
    pub dry_run: bool,
    /// The secret was adopted before this run.
    pub already: bool,
    /// This run wrote something.
    pub changed: bool,
    pub proxy: Option<String>,
    pub steps: Vec<StepReport>,
    pub notes: Vec<String>,
    pub attach: Attach,
}

impl Adoption {
    pub fn new(
        secret: &str,
        engine: Engine,
        user: &str,
        dry_run: bool,
        proxy: Option<String>,
    ) -> Self {
        Self {
            secret: secret.to_owned(),
            engine,
            user: user.to_owned(),
            clone: String::new(),
            dry_run,
            already: false,
            changed: false,
            proxy,
            steps: Vec::new(),
            notes: Vec::new(),
            attach: Attach::default(),
        }
    }

    pub fn step(&mut self, step: &'static str, action: Action, detail: String, sql: Vec<String>) {
        self.steps.push(StepReport {
            step,
            action,
            detail,
            sql,
        });
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let head = if self.already {
            format!(
                "{} is already adopted: {} and {} take turns; nothing to change\n",
                self.secret, self.user, self.clone
            )
        } else if self.dry_run {
            format!(
                "dry run: adopting {} ({}) would make {} and {} take turns; nothing was changed\n",
                self.secret, self.engine, self.user, self.clone
            )
        } else {
            format!(
                "adopted {} ({}): {} and {} take turns\n",
                self.secret, self.engine, self.user, self.clone
            )
        };
        s.push_str(&head);
        for st in &self.steps {
            let verb = match (self.dry_run, st.action) {
                (true, Action::Nothing) => "already done".to_owned(),
                (true, a) => format!("would {}", a.as_str()),
                (false, a) => a.as_str().to_owned(),
            };
            s.push_str(&format!("  {:<13} {verb}: {}\n", st.step, st.detail));
            for sql in &st.sql {
                s.push_str(&format!("      {sql};\n"));
            }
        }
        for n in &self.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
        let a = &self.attach;
        if !a.missing.is_empty() {
            s.push_str(&format!(
                "\nRDS Proxy{} must have a secret for {} before the first rotation. Attach them with\n",
                self.proxy.as_deref().map(|p| format!(" {p}")).unwrap_or_default(),
                a.missing.join(" and ")
            ));
            if let Some(cli) = &a.cli {
                s.push_str(&format!("\n  {cli}\n"));
            }
            if let Some(tf) = &a.terraform {
                s.push_str(&format!("\nor, in Terraform (aws_db_proxy):\n\n{tf}"));
            }
        } else if self.proxy.is_some() {
            s.push_str(&format!(
                "RDS Proxy {} has a secret for each user\n",
                self.proxy.as_deref().unwrap_or_default()
            ));
        }
        s
    }

    pub fn to_json(&self) -> Value {
        json!({
            "secret_id": self.secret,
            "engine": self.engine.as_str(),
            "users": [self.user, self.clone],
            "dry_run": self.dry_run,
            "already_adopted": self.already,
            "changed": self.changed,
            "steps": self.steps.iter().map(|s| json!({
                "step": s.step,
                "action": s.action.as_str(),
                "detail": s.detail,
                "sql": s.sql,
            })).collect::<Vec<_>>(),
            "notes": self.notes,
            "proxy": self.proxy,
            "proxy_missing": self.attach.missing,
            "attach_cli": self.attach.cli,
            "attach_terraform": self.attach.terraform,
        })
    }
}

/// How to give RDS Proxy a secret for each of `users` (user, secret ARN). ModifyDBProxy's
/// `--auth` replaces the whole list, so the command repeats the proxy's entries (when they are
/// known) and adds the missing ones.
pub fn attach(
    proxy: Option<&str>,
    auth: Option<&[ProxyAuth]>,
    users: &[(String, String)],
    engine: Engine,
    app_secret: &str,
) -> Attach {
    let listed = |arn: &str| auth.is_some_and(|a| a.iter().any(|e| e.secret_arn == arn));
    let missing: Vec<&(String, String)> = users.iter().filter(|(_, arn)| !listed(arn)).collect();
    if missing.is_empty() {
        return Attach::default();
    }
    // New entries follow the proxy's own entries' authentication, when it has some.
    let client_auth = auth
        .and_then(|a| a.iter().find_map(|e| e.client_password_auth_type.clone()))
        .or_else(|| (engine == Engine::Postgres).then(|| "POSTGRES_SCRAM_SHA_256".to_owned()));
    let iam_auth = auth
        .and_then(|a| a.iter().find_map(|e| e.iam_auth.clone()))
        .unwrap_or_else(|| "DISABLED".into());
    // The application secret's own entry goes: its user changes with every rotation, and the
    // list would name one user twice.
    let mut entries: Vec<ProxyAuth> = auth
        .unwrap_or_default()
        .iter()
        .filter(|e| e.secret_arn != app_secret)
        .cloned()
        .collect();
    for (user, arn) in &missing {
        entries.push(ProxyAuth {
            secret_arn: arn.clone(),
            iam_auth: Some(iam_auth.clone()),
            client_password_auth_type: client_auth.clone(),
            description: Some(format!("{user}, rotated by rds-rotator")),
        });
    }
    let cli_entries: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut v = json!({"AuthScheme": "SECRETS", "SecretArn": e.secret_arn,
                "IAMAuth": e.iam_auth.clone().unwrap_or_else(|| "DISABLED".into())});
            if let Some(c) = &e.client_password_auth_type {
                v["ClientPasswordAuthType"] = json!(c);
            }
            if let Some(d) = &e.description {
                v["Description"] = json!(d);
            }
            v
        })
        .collect();
    let name = proxy.unwrap_or("<your proxy>");
    // Single-quoted for the shell: a description may hold anything.
    let quoted = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut cli = format!(
        "aws rds modify-db-proxy --db-proxy-name {} --auth {}",
        quoted(name),
        quoted(&Value::Array(cli_entries).to_string())
    );
    if auth.is_none() {
        cli.push_str("\n  (--auth replaces the proxy's whole list: add its other entries, or pass --proxy to adopt and it does)");
    }
    cli.push_str("\n  (the proxy's IAM role needs secretsmanager:GetSecretValue, and kms:Decrypt on their key, for the new secrets)");
    let mut tf = String::new();
    for e in &entries {
        tf.push_str("  auth {\n    auth_scheme = \"SECRETS\"\n");
        tf.push_str(&format!(
            "    iam_auth    = \"{}\"\n",
            e.iam_auth.as_deref().unwrap_or("DISABLED")
        ));
        if let Some(c) = &e.client_password_auth_type {
            tf.push_str(&format!("    client_password_auth_type = \"{c}\"\n"));
        }
        if let Some(d) = &e.description {
            tf.push_str(&format!("    description = {}\n", json!(d)));
        }
        tf.push_str(&format!("    secret_arn  = \"{}\"\n  }}\n", e.secret_arn));
    }
    Attach {
        missing: missing.iter().map(|(u, _)| u.clone()).collect(),
        cli: Some(cli),
        terraform: Some(tf),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attach_call_keeps_the_proxys_entries_and_adds_the_missing_ones() {
        let auth = vec![ProxyAuth {
            secret_arn: "arn:old".into(),
            iam_auth: Some("REQUIRED".into()),
            client_password_auth_type: Some("POSTGRES_MD5".into()),
            description: None,
        }];
        let a = attach(
            Some("p"),
            Some(&auth),
            &[
                ("app".into(), "arn:old".into()),
                ("app_clone".into(), "arn:new".into()),
            ],
            Engine::Postgres,
            "arn:app",
        );
        assert_eq!(a.missing, vec!["app_clone".to_owned()]);
        let cli = a.cli.unwrap();
        assert!(
            cli.starts_with("aws rds modify-db-proxy --db-proxy-name 'p' --auth '["),
            "{cli}"
        );
        assert!(
            cli.contains(r#""SecretArn":"arn:old""#) && cli.contains(r#""IAMAuth":"REQUIRED""#),
            "{cli}"
        );
        assert!(
            cli.contains(r#""SecretArn":"arn:new""#)
                && cli.contains(r#""ClientPasswordAuthType":"POSTGRES_MD5""#),
            "{cli}"
        );
        assert!(cli.contains("GetSecretValue"), "{cli}");
        let tf = a.terraform.unwrap();
        assert_eq!(tf.matches("auth {").count(), 2, "{tf}");
        assert!(tf.contains("secret_arn  = \"arn:new\""), "{tf}");
    }

    #[test]
    fn the_application_secrets_own_entry_is_left_out_and_quotes_survive_the_shell() {
        let auth = vec![ProxyAuth {
            secret_arn: "arn:app".into(),
            iam_auth: None,
            client_password_auth_type: None,
            description: Some("it's the app's".into()),
        }];
        let a = attach(
            Some("p"),
            Some(&auth),
            &[("u".into(), "arn:u".into()), ("c".into(), "arn:c".into())],
            Engine::Mysql,
            "arn:app",
        );
        let cli = a.cli.unwrap();
        assert!(!cli.contains("arn:app"), "{cli}");
        let auth_arg = cli
            .lines()
            .next()
            .unwrap()
            .split(" --auth ")
            .nth(1)
            .unwrap();
        assert!(
            auth_arg.starts_with('\'') && auth_arg.ends_with('\''),
            "{auth_arg}"
        );
    }

    #[test]
    fn nothing_to_attach_when_the_proxy_lists_both() {
        let auth: Vec<ProxyAuth> = ["a", "b"]
            .iter()
            .map(|s| ProxyAuth {
                secret_arn: (*s).into(),
                iam_auth: None,
                client_password_auth_type: None,
                description: None,
            })
            .collect();
        let a = attach(
            Some("p"),
            Some(&auth),
            &[("u".into(), "a".into()), ("c".into(), "b".into())],
            Engine::Mysql,
            "x",
        );
        assert!(a.missing.is_empty() && a.cli.is_none());
    }
}
