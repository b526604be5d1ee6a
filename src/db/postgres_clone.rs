//! Cloning a PostgreSQL role.
//!
//! The clone gets the original's attributes, connection limit, memberships and per-role settings,
//! and becomes a member of the original, with the role setting `role = <original>`. So its
//! sessions act as the original role: objects either user creates are owned by the original,
//! and both may read, write, alter and drop them (the clone through its membership). An original
//! that already acts as a shared owner role by its own `role` setting keeps that arrangement: the
//! clone copies the setting instead.
//!
//! Role DDL is transactional: the statements run in one transaction, so a crash or a refusal
//! leaves either no clone or the whole clone. `VALID UNTIL` is not copied: a rotated password
//! ends when the next rotation replaces it.

use async_trait::async_trait;
use secrecy::SecretString;
use tokio_postgres::Client;

use super::postgres::{classify, quote_ident, quote_literal, verifier, Postgres};
use crate::adopt::ports::{ClonePlan, CloneSession, CloneState, PASSWORD_SLOT};
use crate::rotation::ports::DbError;
use crate::secret::{Credentials, Endpoint};

/// Settings whose stored form is a list PostgreSQL quotes itself (`"$user", public`): copied as
/// written, not as one string.
const LIST_SETTINGS: &[&str] = &[
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "local_preload_libraries",
];

const ROLE_SQL: &str = r#"
SELECT r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
       r.rolreplication, r.rolbypassrls, r.rolconnlimit
  FROM pg_roles r WHERE r.rolname = $1::text::name
"#;

/// (Before PostgreSQL 16 a membership has no INHERIT or SET option of its own: NULL.)
const MEMBERSHIPS_SQL: &str = r#"
SELECT g.rolname::text, bool_or(m.admin_option), NULL::bool, NULL::bool
  FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
 WHERE u.rolname = $1::text::name
 GROUP BY 1 ORDER BY 1
"#;

/// PostgreSQL 16 and later: one grant per grantor, each with its options; the clone gets what
/// any of them gives.
const MEMBERSHIPS_16_SQL: &str = r#"
SELECT g.rolname::text, bool_or(m.admin_option), bool_or(m.inherit_option), bool_or(m.set_option)
  FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
 WHERE u.rolname = $1::text::name
 GROUP BY 1 ORDER BY 1
"#;

/// A role membership and its options (INHERIT and SET: PostgreSQL 16 and later).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Membership {
    role: String,
    admin: bool,
    inherit: Option<bool>,
    set: Option<bool>,
}

const SETTINGS_SQL: &str = r#"
SELECT coalesce(d.datname::text, ''), c
  FROM pg_db_role_setting s JOIN pg_roles u ON u.oid = s.setrole
       LEFT JOIN pg_database d ON d.oid = s.setdatabase, LATERAL unnest(s.setconfig) AS c
 WHERE u.rolname = $1::text::name
 ORDER BY 1, 2
"#;

/// What makes two roles the same for an application, as comparable values.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    /// `LOGIN NOSUPERUSER INHERIT ...`, in CREATE ROLE's words.
    attributes: Vec<&'static str>,
    connection_limit: i32,
    memberships: Vec<Membership>,
    /// (database or "", `name=value`)
    settings: Vec<(String, String)>,
}

impl Shape {
    fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self.attributes.iter().map(|a| a.to_string()).collect();
        out.push(format!("CONNECTION LIMIT {}", self.connection_limit));
        out.extend(
            self.memberships
                .iter()
                .map(|m| format!("member of {}{}", quote_ident(&m.role), options(m))),
        );
        out.extend(self.settings.iter().map(|(db, s)| {
            if db.is_empty() {
                format!("setting {s}")
            } else {
                format!("setting {s} in database {}", quote_ident(db))
            }
        }));
        out
    }
}

/// A membership's options as GRANT writes them: `WITH ADMIN TRUE, INHERIT FALSE, SET TRUE` on
/// PostgreSQL 16 and later, `WITH ADMIN OPTION` (or nothing) before.
fn options(m: &Membership) -> String {
    match (m.inherit, m.set) {
        (Some(inherit), Some(set)) => {
            format!(" WITH ADMIN {}, INHERIT {inherit}, SET {set}", m.admin).to_uppercase()
        }
        _ if m.admin => " WITH ADMIN OPTION".to_owned(),
        _ => String::new(),
    }
}

pub struct PgCloneSession {
    client: Client,
    at: Endpoint,
    login: String,
    /// server_version_num
    version: i32,
    /// The clone's shape, as the last plan made it.
    want: Option<Shape>,
}

impl PgCloneSession {
    pub async fn open(pg: &Postgres, at: &Endpoint, login: &Credentials) -> Result<Self, DbError> {
        let client = pg.connect(at, login).await?;
        // As the rotation's sessions: the login's own rights, not a role setting's, and the
        // server's own bounds, so that a statement whose client gave up never lands later.
        let mut setup = "SET ROLE NONE; SET default_transaction_read_only = off".to_owned();
        if let Some(limit) = pg.statement_timeout {
            let ms = limit.as_millis();
            setup.push_str(&format!(
                "; SET statement_timeout = {ms}; SET lock_timeout = {ms}"
            ));
        }
        client
            .batch_execute(&setup)
            .await
            .map_err(|e| classify(at, &login.username, e))?;
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(|e| classify(at, &login.username, e))?
            .get(0);
        Ok(Self {
            client,
            at: at.clone(),
            login: login.username.clone(),
            version,
            want: None,
        })
    }

    fn err(&self, e: tokio_postgres::Error) -> DbError {
        classify(&self.at, &self.login, e)
    }

    async fn shape(&self, user: &str) -> Result<Option<Shape>, DbError> {
        let Some(row) = self
            .client
            .query_opt(ROLE_SQL, &[&user])
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(None);
        };
        let flag = |i: usize, yes: &'static str, no: &'static str| {
            if row.get::<_, bool>(i) {
                yes
            } else {
                no
            }
        };
        let attributes = vec![
            flag(4, "LOGIN", "NOLOGIN"),
            flag(0, "SUPERUSER", "NOSUPERUSER"),
            flag(1, "INHERIT", "NOINHERIT"),
            flag(2, "CREATEROLE", "NOCREATEROLE"),
            flag(3, "CREATEDB", "NOCREATEDB"),
            flag(5, "REPLICATION", "NOREPLICATION"),
            flag(6, "BYPASSRLS", "NOBYPASSRLS"),
        ];
        let sql = if self.version >= 160_000 {
            MEMBERSHIPS_16_SQL
        } else {
            MEMBERSHIPS_SQL
        };
        let memberships = self
            .client
            .query(sql, &[&user])
            .await
            .map_err(|e| self.err(e))?
            .iter()
            .map(|r| Membership {
                role: r.get(0),
                admin: r.get(1),
                inherit: r.get(2),
                set: r.get(3),
            })
            .collect();
        let settings = self
            .client
            .query(SETTINGS_SQL, &[&user])
            .await
            .map_err(|e| self.err(e))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(Some(Shape {
            attributes,
            connection_limit: row.get(7),
            memberships,
            settings,
        }))
    }
}

/// The shape the clone of `user` must have. `v16`: memberships carry INHERIT and SET.
fn clone_shape(user: &str, original: &Shape, v16: bool) -> Shape {
    let mut shape = original.clone();
    shape.attributes[0] = "LOGIN";
    if !shape.memberships.iter().any(|m| m.role == user) {
        // SET: the role setting makes each session SET ROLE to it; INHERIT: its privileges
        // hold before that too (a role setting applies after login).
        shape.memberships.push(Membership {
            role: user.to_owned(),
            admin: false,
            inherit: v16.then_some(true),
            set: v16.then_some(true),
        });
        shape.memberships.sort();
    }
    let acts_as_another = original
        .settings
        .iter()
        .any(|(db, s)| db.is_empty() && s.starts_with("role="));
    if !acts_as_another {
        shape.settings.push((String::new(), format!("role={user}")));
        shape.settings.sort();
    }
    shape
}

/// `ALTER ROLE ... SET` for one stored setting (`name=value`).
fn setting_statement(clone: &str, db: &str, stored: &str) -> Result<String, DbError> {
    let (name, value) = stored.split_once('=').unwrap_or((stored, ""));
    let plain_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    let value = if LIST_SETTINGS.contains(&name) {
        // Already quoted by the server, element by element; anything else is not a list it made.
        if !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_$\", .-".contains(c))
        {
            return Err(DbError::Refused(format!(
                "the setting {name} of the original user cannot be copied as stored ({value:?}); set it on the clone by hand, then run adopt again"
            )));
        }
        value.to_owned()
    } else {
        quote_literal(value)
    };
    if !plain_name {
        return Err(DbError::Refused(format!(
            "the setting name {name:?} of the original user cannot be copied"
        )));
    }
    let scope = if db.is_empty() {
        String::new()
    } else {
        format!(" IN DATABASE {}", quote_ident(db))
    };
    Ok(format!(
        "ALTER ROLE {}{scope} SET {name} = {value}",
        quote_ident(clone)
    ))
}

fn statements(clone: &str, shape: &Shape) -> Result<Vec<String>, DbError> {
    let mut out = vec![format!(
        "CREATE ROLE {} WITH {} CONNECTION LIMIT {} PASSWORD '{PASSWORD_SLOT}'",
        quote_ident(clone),
        shape.attributes.join(" "),
        shape.connection_limit
    )];
    for m in &shape.memberships {
        out.push(format!(
            "GRANT {} TO {}{}",
            quote_ident(&m.role),
            quote_ident(clone),
            options(m)
        ));
    }
    for (db, s) in &shape.settings {
        out.push(setting_statement(clone, db, s)?);
    }
    Ok(out)
}

fn compare(want: &Shape, have: &Shape) -> CloneState {
    let (want, have) = (want.lines(), have.lines());
    let mut differences: Vec<String> = have
        .iter()
        .filter(|l| !want.contains(l))
        .map(|l| format!("has {l}"))
        .collect();
    differences.extend(
        want.iter()
            .filter(|l| !have.contains(l))
            .map(|l| format!("lacks {l}")),
    );
    if differences.is_empty() {
        CloneState::Same
    } else {
        CloneState::Different { differences }
    }
}

#[async_trait]
impl CloneSession for PgCloneSession {
    async fn plan(&mut self, user: &str, clone: &str) -> Result<ClonePlan, DbError> {
        let original = self
            .shape(user)
            .await?
            .ok_or_else(|| DbError::Refused(format!("there is no role {user}")))?;
        let want = clone_shape(user, &original, self.version >= 160_000);
        let state = match self.shape(clone).await? {
            None => CloneState::Absent,
            Some(have) => compare(&want, &have),
        };
        // Only a clone to be made needs statements; a setting that cannot be copied does not
        // stop a rerun that finds the clone made.
        let statements = match &state {
            CloneState::Absent => statements(clone, &want)?,
            _ => statements(clone, &want).unwrap_or_default(),
        };
        self.want = Some(want);
        let mut notes = Vec::new();
        if original
            .settings
            .iter()
            .any(|(db, s)| db.is_empty() && s.starts_with("role="))
        {
            notes.push(format!("{user} acts as another role by its role setting; the clone copies it, so both share that owner"));
        } else {
            notes.push(format!("{clone} acts as {user} (member of {user}, role setting role={user}): objects either creates are owned by {user}"));
        }
        Ok(ClonePlan {
            user: user.to_owned(),
            clone: clone.to_owned(),
            state,
            statements,
            notes,
        })
    }

    async fn rehearse(&mut self, plan: &ClonePlan, password: &SecretString) -> Result<(), DbError> {
        let may: bool = self
            .client
            .query_one(
                "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = session_user",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?
            .get(0);
        if !may {
            return Err(DbError::NotPermitted(format!(
                "{} has neither CREATEROLE nor SUPERUSER, so it cannot create {}",
                self.login, plan.clone
            )));
        }
        if self.version >= 160_000 {
            // PostgreSQL 16: CREATEROLE grants and alters only roles held WITH ADMIN OPTION (a
            // role's creator holds it; a role made by another admin or before an upgrade may
            // not). The user itself too: the clone is made its member, and every rotation sets
            // its password.
            let roles: Vec<String> = std::iter::once(plan.user.clone())
                .chain(
                    self.want
                        .iter()
                        .flat_map(|w| w.memberships.iter().map(|m| m.role.clone())),
                )
                .fold(Vec::new(), |mut roles, r| {
                    if !roles.contains(&r) {
                        roles.push(r);
                    }
                    roles
                });
            let lacking: Vec<String> = self
                .client
                .query(
                    "SELECT r FROM unnest($1::text[]) AS r
                      WHERE NOT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user)
                        AND NOT pg_has_role(session_user, r::name, 'MEMBER WITH ADMIN OPTION')",
                    &[&roles],
                )
                .await
                .map_err(|e| self.err(e))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if !lacking.is_empty() {
                return Err(DbError::NotPermitted(format!(
                    "{} lacks ADMIN OPTION on {}, which PostgreSQL 16 and later require to grant them to {}{}; an administrator (the role that made them, or a superuser) can run GRANT {} TO {} WITH ADMIN OPTION",
                    self.login,
                    lacking.join(", "),
                    plan.clone,
                    if lacking.contains(&plan.user) {
                        format!(" and to set {}'s password", plan.user)
                    } else {
                        String::new()
                    },
                    lacking.iter().map(|r| quote_ident(r)).collect::<Vec<_>>().join(", "),
                    quote_ident(&self.login)
                )));
            }
        }
        // The real statements, rolled back: the server's own permission checks, nothing kept.
        let v = verifier(&plan.clone, password, "scram-sha-256").await;
        let r = self.run(plan, &v, false).await;
        let _ = self.client.batch_execute("ROLLBACK").await;
        r
    }

    async fn apply(&mut self, plan: &ClonePlan, password: &SecretString) -> Result<(), DbError> {
        let encryption: String = self
            .client
            .query_one("SELECT current_setting('password_encryption')", &[])
            .await
            .map_err(|e| self.err(e))?
            .get(0);
        if encryption == "md5" {
            tracing::warn!(at = %self.at, "password_encryption is md5: the clone gets an MD5 verifier, which logs in by itself; keep statement logging (log_statement = ddl or all) away from it");
        }
        let v = verifier(&plan.clone, password, &encryption).await;
        if let Err(e) = self.run(plan, &v, true).await {
            let _ = self.client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| self.err(e))
    }
}

impl PgCloneSession {
    /// BEGIN and the statements, with `verifier` in the password's place; the caller ends the
    /// transaction. `applying`: the real run, not the rehearsal (for the crash tests' failpoint).
    async fn run(&self, plan: &ClonePlan, verifier: &str, applying: bool) -> Result<(), DbError> {
        self.client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| self.err(e))?;
        for (i, sql) in plan.statements.iter().enumerate() {
            // The verifier is base64 and `$:`; the slot sits inside a literal already.
            let sql = sql.replace(PASSWORD_SLOT, verifier);
            self.client
                .batch_execute(&sql)
                .await
                .map_err(|e| self.err(e))?;
            if i == 0 && applying {
                crate::failpoint::hit("inside:adopt.clone_user").await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn original() -> Shape {
        Shape {
            attributes: vec![
                "LOGIN",
                "NOSUPERUSER",
                "INHERIT",
                "NOCREATEROLE",
                "CREATEDB",
                "NOREPLICATION",
                "NOBYPASSRLS",
            ],
            connection_limit: 20,
            memberships: vec![Membership {
                role: "readers".into(),
                admin: false,
                inherit: None,
                set: None,
            }],
            settings: vec![
                (String::new(), "search_path=\"$user\", public".into()),
                ("shop".into(), "statement_timeout=5s".into()),
            ],
        }
    }

    #[test]
    fn the_clone_is_a_member_of_the_original_and_acts_as_it() {
        let want = clone_shape("app", &original(), false);
        let sql = statements("app_clone", &want).unwrap();
        assert_eq!(
            sql,
            vec![
                format!("CREATE ROLE \"app_clone\" WITH LOGIN NOSUPERUSER INHERIT NOCREATEROLE CREATEDB NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 20 PASSWORD '{PASSWORD_SLOT}'"),
                "GRANT \"app\" TO \"app_clone\"".to_owned(),
                "GRANT \"readers\" TO \"app_clone\"".to_owned(),
                "ALTER ROLE \"app_clone\" SET role = 'app'".to_owned(),
                "ALTER ROLE \"app_clone\" SET search_path = \"$user\", public".to_owned(),
                "ALTER ROLE \"app_clone\" IN DATABASE \"shop\" SET statement_timeout = '5s'".to_owned(),
            ]
        );
    }

    #[test]
    fn an_original_acting_as_an_owner_role_passes_its_setting_on() {
        let mut o = original();
        o.settings.push((String::new(), "role=owner".into()));
        o.memberships.push(Membership {
            role: "owner".into(),
            admin: false,
            inherit: None,
            set: None,
        });
        let want = clone_shape("app", &o, false);
        let settings: Vec<&str> = want.settings.iter().map(|(_, s)| s.as_str()).collect();
        assert!(settings.contains(&"role=owner") && !settings.contains(&"role=app"));
    }

    #[test]
    fn a_clone_with_other_rights_is_told_apart() {
        let want = clone_shape("app", &original(), false);
        assert_eq!(compare(&want, &want), CloneState::Same);
        let mut have = want.clone();
        have.memberships.push(Membership {
            role: "admins".into(),
            admin: true,
            inherit: None,
            set: None,
        });
        have.attributes[4] = "NOCREATEDB";
        let CloneState::Different { differences } = compare(&want, &have) else {
            panic!("not different");
        };
        assert!(differences.contains(&"has member of \"admins\" WITH ADMIN OPTION".to_owned()));
        assert!(differences.contains(&"lacks CREATEDB".to_owned()));
    }

    #[test]
    fn on_postgresql_16_memberships_keep_their_inherit_and_set_options() {
        let mut o = original();
        o.memberships[0].inherit = Some(false);
        o.memberships[0].set = Some(true);
        let want = clone_shape("app", &o, true);
        let sql = statements("app_clone", &want).unwrap();
        assert!(
            sql.contains(
                &"GRANT \"app\" TO \"app_clone\" WITH ADMIN FALSE, INHERIT TRUE, SET TRUE"
                    .to_owned()
            ),
            "{sql:?}"
        );
        assert!(
            sql.contains(
                &"GRANT \"readers\" TO \"app_clone\" WITH ADMIN FALSE, INHERIT FALSE, SET TRUE"
                    .to_owned()
            ),
            "{sql:?}"
        );
    }

    #[test]
    fn settings_that_are_not_plain_are_refused_not_spliced() {
        assert!(setting_statement("c", "", "search_path=a; DROP ROLE x").is_err());
        assert!(setting_statement("c", "", "x\"y=1").is_err());
        assert_eq!(
            setting_statement("c", "", "application_name=it's").unwrap(),
            "ALTER ROLE \"c\" SET application_name = 'it''s'"
        );
    }
}
