//! Cloning a MySQL or MariaDB user: every account (`user@host`) of it, each with the original
//! account's options (`REQUIRE`, resource limits, password expiry, lock), auth plugin and
//! grants, role grants and default role included.
//!
//! MySQL and MariaDB have no object owners (views and routines run as their DEFINER), so grants
//! are the whole arrangement: both users get the same ones.
//!
//! Account statements are not transactional. A crash part way leaves some accounts or grants
//! in place; every statement is idempotent (`CREATE USER IF NOT EXISTS`, `GRANT`), so running
//! the plan again completes it. The password reaches the server as on the rotation's path: the
//! `mysql_native_password` hash on MariaDB, the plaintext with the plugin's name on MySQL.

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use secrecy::{ExposeSecret, SecretString};
use sha1::{Digest, Sha1};

use super::mysql::{
    classify, literal, native_password_hash, normalise_grant, without_credentials, MySql,
};
use crate::adopt::ports::{ClonePlan, CloneSession, CloneState, PASSWORD_SLOT};
use crate::rotation::ports::DbError;
use crate::secret::{Credentials, Endpoint};

/// Where the account options of a `SHOW CREATE USER` statement start, after its auth clause.
const OPTION_KEYWORDS: &[&str] = &[
    " REQUIRE ",
    " WITH ",
    " PASSWORD EXPIRE",
    " PASSWORD HISTORY",
    " PASSWORD REUSE",
    " PASSWORD REQUIRE",
    " ACCOUNT ",
    " DEFAULT ROLE ",
    " COMMENT ",
    " ATTRIBUTE ",
    " FAILED_LOGIN_ATTEMPTS",
    " PASSWORD_LOCK_TIME",
];

/// One account of the original user, as the server shows it.
#[derive(Debug, Clone)]
struct Account {
    host: String,
    plugin: String,
    /// `SHOW CREATE USER`'s options after the auth clause (`REQUIRE SSL WITH ...`).
    options: String,
    grants: Vec<String>,
}

pub struct MyCloneSession {
    conn: Conn,
    at: Endpoint,
    login: Credentials,
    mariadb: bool,
}

/// `` `user`@`host` `` as SHOW GRANTS writes it (and MySQL 5.7's `'user'@'host'`).
fn quoted_accounts(user: &str, host: &str) -> [String; 2] {
    [format!("`{user}`@`{host}`"), format!("'{user}'@'{host}'")]
}

/// Splits a `SHOW CREATE USER` statement of `user@host` into its auth clause and its options.
fn account_options(statement: &str, user: &str, host: &str) -> Option<String> {
    let rest = quoted_accounts(user, host)
        .iter()
        .find_map(|a| statement.strip_prefix(&format!("CREATE USER {a}")))?;
    // The auth clause ends at the first option keyword outside a quoted string (hashes are
    // quoted, and may hold anything).
    // (MySQL's own `IDENTIFIED WITH` is not the `WITH` of resource limits.)
    let start = if rest.starts_with(" IDENTIFIED WITH ") {
        " IDENTIFIED WITH ".len()
    } else {
        0
    };
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut chars = rest
        .char_indices()
        .skip_while(|(i, _)| *i < start)
        .peekable();
    while let Some((i, c)) = chars.next() {
        match quote {
            // `\'` and `''` inside a string (MySQL 8 prints a binary hash as an escaped string).
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q && chars.peek().is_some_and(|(_, n)| *n == q) => {
                chars.next();
            }
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if OPTION_KEYWORDS.iter().any(|k| rest[i..].starts_with(k)) => {
                return Some(rest[i..].trim().to_owned());
            }
            None => {}
        }
    }
    Some(String::new())
}

/// A grant of `user@host` rewritten for `clone@host`, without credentials. `None` for the
/// `USAGE` line, which says nothing the account options do not (unless it carries GRANT OPTION).
fn clone_grant(line: &str, user: &str, clone: &str, host: &str) -> Option<String> {
    let mut s = without_credentials(line);
    if s.starts_with("GRANT USAGE ON *.* TO ") && !s.contains("GRANT OPTION") {
        return None;
    }
    for (from, to) in quoted_accounts(user, host)
        .iter()
        .zip(quoted_accounts(clone, host).iter())
    {
        s = s.replace(from, to);
    }
    Some(s)
}

/// The names of rehearsal accounts (`rehearse`).
const PROBE_PREFIX: &str = "rdsrot_probe_";

impl MyCloneSession {
    async fn drop_user(&mut self, user: &str, host: &str) -> Result<(), DbError> {
        let sql = format!(
            "DROP USER IF EXISTS {}@{}",
            literal(user, "user name")?,
            literal(host, "account host")?
        );
        let done = self.conn.query_drop(sql).await;
        done.map_err(|e| self.err(e, &[]))
    }

    pub async fn open(my: &MySql, at: &Endpoint, login: &Credentials) -> Result<Self, DbError> {
        let mut conn = my.connect(at, login).await?;
        if let Some(limit) = my.statement_timeout {
            // As the rotation's sessions: a statement whose client gave up never lands later.
            let secs = limit.as_secs().max(1);
            conn.query_drop(format!(
                "SET SESSION lock_wait_timeout = {secs}, innodb_lock_wait_timeout = {secs}"
            ))
            .await
            .map_err(|e| classify(at, &login.username, e, &[login.password.expose_secret()]))?;
        }
        let version: Option<String> = conn
            .query_first("SELECT VERSION()")
            .await
            .map_err(|e| classify(at, &login.username, e, &[login.password.expose_secret()]))?;
        let mariadb = version.unwrap_or_default().contains("MariaDB");
        if !mariadb {
            // MySQL 8.0.17+: SHOW CREATE USER prints hashes in hex, unquoted (older servers
            // refuse the variable: the scanner copes with the quoted form).
            let _ = conn
                .query_drop("SET SESSION print_identified_with_as_hex = ON")
                .await;
        }
        Ok(Self {
            conn,
            at: at.clone(),
            login: login.clone(),
            mariadb,
        })
    }

    fn err(&self, e: mysql_async::Error, secrets: &[&str]) -> DbError {
        let mut all = vec![self.login.password.expose_secret()];
        all.extend_from_slice(secrets);
        match classify(&self.at, &self.login.username, e, &all) {
            // Logged in already: 1044 or 1045 on a statement is a right the login lacks (MySQL
            // answers a GRANT the grantor may not give with 1045).
            DbError::LoginForbidden { reason, .. } => DbError::NotPermitted(reason),
            DbError::LoginRejected(user) => {
                DbError::NotPermitted(format!("{user} may not run this statement (access denied)"))
            }
            other => other,
        }
    }

    async fn accounts(&mut self, user: &str) -> Result<Vec<Account>, DbError> {
        let rows: Result<Vec<(String, String)>, _> = self
            .conn
            .exec(
                "SELECT Host, plugin FROM mysql.user WHERE User = ? ORDER BY Host",
                (user,),
            )
            .await;
        let rows = rows.map_err(|e| self.err(e, &[]))?;
        let mut out = Vec::new();
        for (host, plugin) in rows {
            let account = format!(
                "{}@{}",
                literal(user, "user name")?,
                literal(&host, "account host")?
            );
            let create: Result<Option<String>, _> = self
                .conn
                .query_first(format!("SHOW CREATE USER {account}"))
                .await;
            let create = create.map_err(|e| self.err(e, &[]))?.unwrap_or_default();
            let options = account_options(&create, user, &host).ok_or_else(|| {
                DbError::Refused(format!("cannot read SHOW CREATE USER of {user}@{host}"))
            })?;
            let grants: Result<Vec<String>, _> =
                self.conn.query(format!("SHOW GRANTS FOR {account}")).await;
            let grants = grants.map_err(|e| self.err(e, &[]))?;
            out.push(Account {
                host,
                plugin,
                options,
                grants,
            });
        }
        Ok(out)
    }

    /// What stands for the password in the statements (MariaDB: the hash; MySQL: the
    /// plaintext, for the plugin to hash), and the hash, to scrub from messages.
    fn on_the_wire(&self, pw: &str) -> Result<(String, String), DbError> {
        let hash = native_password_hash(pw);
        if self.mariadb {
            return Ok((hash.clone(), hash));
        }
        Ok((
            literal(pw, "new password")?.trim_matches('\'').to_owned(),
            hash,
        ))
    }
}

/// The auth clause for the clone's account (MariaDB: the `mysql_native_password` hash; MySQL:
/// the plaintext with the plugin's name, which MySQL 8 documents for `CREATE USER`).
fn auth_clause(mariadb: bool, plugin: &str, user: &str, host: &str) -> Result<String, DbError> {
    match (mariadb, plugin) {
        (true, "mysql_native_password") => Ok(format!("IDENTIFIED BY PASSWORD '{PASSWORD_SLOT}'")),
        (false, "mysql_native_password" | "caching_sha2_password" | "sha256_password") => {
            Ok(format!("IDENTIFIED WITH {plugin} BY '{PASSWORD_SLOT}'"))
        }
        _ => Err(DbError::Refused(format!(
            "{user}@{host} authenticates with {plugin}, which adopt cannot give a password (it handles mysql_native_password{})",
            if mariadb { "" } else { ", caching_sha2_password and sha256_password" }
        ))),
    }
}

#[async_trait]
impl CloneSession for MyCloneSession {
    async fn plan(&mut self, user: &str, clone: &str) -> Result<ClonePlan, DbError> {
        let original = self.accounts(user).await?;
        if original.is_empty() {
            return Err(DbError::Refused(format!(
                "there is no account for user {user}"
            )));
        }
        let existing = self.accounts(clone).await?;
        let mut statements = Vec::new();
        let (mut missing, mut differences) = (Vec::new(), Vec::new());
        for a in &original {
            let account = format!(
                "{}@{}",
                literal(clone, "user name")?,
                literal(&a.host, "account host")?
            );
            let options = if a.options.is_empty() {
                String::new()
            } else {
                format!(" {}", a.options)
            };
            statements.push(format!(
                "CREATE USER IF NOT EXISTS {account} {}{options}",
                auth_clause(self.mariadb, &a.plugin, user, &a.host)?
            ));
            let grants: Vec<String> = a
                .grants
                .iter()
                .filter_map(|g| clone_grant(g, user, clone, &a.host))
                .collect();
            statements.extend(grants);
            match existing.iter().find(|e| e.host == a.host) {
                None => missing.push(format!("account {clone}@{}", a.host)),
                Some(e) => {
                    if e.plugin != a.plugin || e.options != a.options {
                        differences.push(format!(
                            "{clone}@{} has plugin {} and options {:?}, not {} and {:?}",
                            a.host, e.plugin, e.options, a.plugin, a.options
                        ));
                    }
                    let want: Vec<String> =
                        a.grants.iter().map(|g| normalise_grant(g, user)).collect();
                    let have: Vec<String> =
                        e.grants.iter().map(|g| normalise_grant(g, clone)).collect();
                    differences.extend(
                        have.iter()
                            .filter(|g| !want.contains(g))
                            .map(|g| format!("{clone}@{} has {g}", a.host)),
                    );
                    missing.extend(
                        want.iter()
                            .filter(|g| !have.contains(g))
                            .map(|g| format!("{clone}@{}: {g}", a.host)),
                    );
                }
            }
        }
        for e in existing
            .iter()
            .filter(|e| !original.iter().any(|a| a.host == e.host))
        {
            differences.push(format!(
                "account {clone}@{}, which {user} does not have",
                e.host
            ));
        }
        let state = if existing.is_empty() {
            CloneState::Absent
        } else if !differences.is_empty() {
            CloneState::Different { differences }
        } else if !missing.is_empty() {
            CloneState::Partial { missing }
        } else {
            CloneState::Same
        };
        let hosts: Vec<&str> = original.iter().map(|a| a.host.as_str()).collect();
        Ok(ClonePlan {
            user: user.to_owned(),
            clone: clone.to_owned(),
            state,
            statements,
            notes: vec![format!(
                "{clone} gets an account on each host of {user} ({}), with the same grants",
                hosts.join(", ")
            )],
        })
    }

    /// The plan's statements for a throwaway, locked account instead of the clone, then DROP
    /// USER: the server's own permission checks (a grant the master may not give, a role without
    /// ADMIN OPTION), without a clone left half made. Probes a crashed run left are dropped first.
    async fn rehearse(&mut self, plan: &ClonePlan, password: &SecretString) -> Result<(), DbError> {
        // Named after the clone: a crashed rehearsal's account is this one, found and dropped
        // the next time; another adoption's is left alone.
        let digest = Sha1::digest(plan.clone.as_bytes());
        let probe = format!(
            "{PROBE_PREFIX}{}",
            digest[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let left: Result<Vec<String>, _> = self
            .conn
            .exec("SELECT Host FROM mysql.user WHERE User = ?", (&probe,))
            .await;
        for host in left.map_err(|e| self.err(e, &[]))? {
            self.drop_user(&probe, &host).await?;
        }
        let pw = password.expose_secret();
        let (secret, hash) = self.on_the_wire(pw)?;
        let mut made: Vec<String> = Vec::new();
        let mut result = Ok(());
        for sql in &plan.statements {
            let mut sql = sql.replace(PASSWORD_SLOT, &secret);
            for (from, to) in [
                (format!("'{}'@'", plan.clone), format!("'{probe}'@'")),
                (format!("`{}`@`", plan.clone), format!("`{probe}`@`")),
            ] {
                sql = sql.replace(&from, &to);
            }
            if sql.starts_with("CREATE USER") {
                // Never a login: locked from the start.
                if sql.contains(" ACCOUNT UNLOCK") {
                    sql = sql.replace(" ACCOUNT UNLOCK", " ACCOUNT LOCK");
                } else if !sql.contains(" ACCOUNT LOCK") {
                    sql.push_str(" ACCOUNT LOCK");
                }
                if let Some(host) = sql
                    .split(&format!("'{probe}'@'"))
                    .nth(1)
                    .and_then(|r| r.split('\'').next())
                {
                    made.push(host.to_owned());
                }
            }
            if let Err(e) = self.conn.query_drop(&sql).await {
                result = Err(self.err(e, &[pw, hash.as_str()]));
                break;
            }
        }
        for host in made {
            let dropped = self.drop_user(&probe, &host).await;
            // The rehearsal's own error says more than a failed clean-up.
            if result.is_ok() {
                dropped?;
            }
        }
        result
    }

    async fn apply(&mut self, plan: &ClonePlan, password: &SecretString) -> Result<(), DbError> {
        let pw = password.expose_secret();
        let (secret, hash) = self.on_the_wire(pw)?;
        for (i, sql) in plan.statements.iter().enumerate() {
            let sql = sql.replace(PASSWORD_SLOT, &secret);
            let done = self.conn.query_drop(sql).await;
            done.map_err(|e| self.err(e, &[pw, hash.as_str()]))?;
            if i == 0 {
                crate::failpoint::hit("inside:adopt.clone_user").await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_options_follow_the_auth_clause_whatever_the_hash_holds() {
        assert_eq!(
            account_options(
                "CREATE USER `u`@`%` IDENTIFIED BY PASSWORD '*0D3C' WITH MAX_USER_CONNECTIONS 3",
                "u",
                "%"
            )
            .unwrap(),
            "WITH MAX_USER_CONNECTIONS 3"
        );
        assert_eq!(
            account_options(
                "CREATE USER `u`@`h` IDENTIFIED WITH 'caching_sha2_password' AS '$A$005$ WITH x' REQUIRE NONE PASSWORD EXPIRE DEFAULT ACCOUNT UNLOCK",
                "u",
                "h"
            )
            .unwrap(),
            "REQUIRE NONE PASSWORD EXPIRE DEFAULT ACCOUNT UNLOCK"
        );
        assert_eq!(
            account_options("CREATE USER `u`@`%` IDENTIFIED BY PASSWORD '*0D'", "u", "%").unwrap(),
            ""
        );
        assert!(account_options("CREATE USER `v`@`%`", "u", "%").is_none());
    }

    /// MySQL 8 prints hashes as hex when `print_identified_with_as_hex` is on (8.0.17+, set by
    /// `open`), and as escaped strings otherwise; `sha256_password` hashes are strings too.
    #[test]
    fn account_options_of_mysql_8_accounts_follow_each_plugins_hash() {
        assert_eq!(
            account_options(
                "CREATE USER `u`@`%` IDENTIFIED WITH 'caching_sha2_password' AS 0x24412430303524 REQUIRE SSL PASSWORD EXPIRE DEFAULT ACCOUNT UNLOCK PASSWORD HISTORY DEFAULT PASSWORD REUSE INTERVAL DEFAULT PASSWORD REQUIRE CURRENT DEFAULT",
                "u",
                "%"
            )
            .unwrap(),
            "REQUIRE SSL PASSWORD EXPIRE DEFAULT ACCOUNT UNLOCK PASSWORD HISTORY DEFAULT PASSWORD REUSE INTERVAL DEFAULT PASSWORD REQUIRE CURRENT DEFAULT"
        );
        assert_eq!(
            account_options(
                "CREATE USER 'u'@'10.0.%' IDENTIFIED WITH 'sha256_password' AS '$5$ab\\'c REQUIRE X$' WITH MAX_QUERIES_PER_HOUR 9 ACCOUNT LOCK",
                "u",
                "10.0.%"
            )
            .unwrap(),
            "WITH MAX_QUERIES_PER_HOUR 9 ACCOUNT LOCK"
        );
        assert_eq!(
            account_options(
                "CREATE USER `u`@`%` IDENTIFIED WITH 'mysql_native_password' AS '*0D3C' REQUIRE NONE",
                "u",
                "%"
            )
            .unwrap(),
            "REQUIRE NONE"
        );
    }

    #[test]
    fn the_clone_keeps_the_originals_plugin_and_an_unknown_plugin_is_refused() {
        for plugin in [
            "mysql_native_password",
            "caching_sha2_password",
            "sha256_password",
        ] {
            assert_eq!(
                auth_clause(false, plugin, "u", "%").unwrap(),
                format!("IDENTIFIED WITH {plugin} BY '{PASSWORD_SLOT}'"),
                "MySQL, {plugin}"
            );
        }
        assert_eq!(
            auth_clause(true, "mysql_native_password", "u", "%").unwrap(),
            format!("IDENTIFIED BY PASSWORD '{PASSWORD_SLOT}'")
        );
        for (mariadb, plugin) in [
            (false, "authentication_ldap_sasl"),
            (false, "auth_socket"),
            (true, "caching_sha2_password"),
            (true, "ed25519"),
        ] {
            let e = auth_clause(mariadb, plugin, "u", "h")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("u@h authenticates with {plugin}")),
                "{e}"
            );
        }
    }

    #[test]
    fn grants_are_rewritten_for_the_clone_without_credentials() {
        let (u, c, h) = ("app", "app_clone", "%");
        assert_eq!(
            clone_grant("GRANT SELECT, INSERT ON `shop`.* TO `app`@`%`", u, c, h).unwrap(),
            "GRANT SELECT, INSERT ON `shop`.* TO `app_clone`@`%`"
        );
        assert_eq!(
            clone_grant("GRANT `r` TO `app`@`%`", u, c, h).unwrap(),
            "GRANT `r` TO `app_clone`@`%`"
        );
        assert_eq!(
            clone_grant("SET DEFAULT ROLE `r` FOR `app`@`%`", u, c, h).unwrap(),
            "SET DEFAULT ROLE `r` FOR `app_clone`@`%`"
        );
        assert!(clone_grant(
            "GRANT USAGE ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*AB' WITH MAX_USER_CONNECTIONS 3",
            u,
            c,
            h
        )
        .is_none());
        assert_eq!(
            clone_grant(
                "GRANT ALL PRIVILEGES ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*AB' WITH GRANT OPTION",
                u,
                c,
                h
            )
            .unwrap(),
            "GRANT ALL PRIVILEGES ON *.* TO `app_clone`@`%` WITH GRANT OPTION"
        );
    }
}
