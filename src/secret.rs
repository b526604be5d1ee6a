//! The secret formats, parsed into one validated type.
//!
//! Two layouts are accepted and may be mixed:
//! - the seed tool's: `rotation_type`, `rotation_usernames`, `proxy_secret_ids`, `database_host`,
//!   `database_port`, `database_name`, `username`, `password`;
//! - the AWS-standard one: `engine`, `host`, `port`, `dbname`, `username`, `password`, `masterarn`.
//!
//! Every key is kept verbatim when a new version is written: only `username` and `password` change.
//! The password leaves the JSON map the moment it is parsed and lives in a [`SecretString`], so
//! neither `Debug` nor an error message can print it.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Secrets Manager caps a secret value at 64 KiB; anything larger is not ours.
const MAX_SECRET_BYTES: usize = 65_536;
/// A password longer than this is not a database password we generated or can use.
const MAX_PASSWORD_BYTES: usize = 1_024;
/// Users taking turns: two is the norm; a long list is a mistake, not a rotation.
const MAX_ROTATION_USERS: usize = 16;
/// RDS allows 15 read replicas of an instance, Aurora 15 readers in a cluster.
const MAX_READERS: usize = 15;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("secret value is not valid JSON")]
    NotJson,
    #[error("secret value is not a JSON object")]
    NotObject,
    #[error("secret value is larger than {MAX_SECRET_BYTES} bytes")]
    TooLarge,
    #[error("secret is missing the key `{0}`")]
    Missing(&'static str),
    #[error("secret key `{key}` must be {expected}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
    },
    #[error("secret key `{key}` is invalid: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("secret has both `{0}` and `{1}` with different values")]
    Conflict(&'static str, &'static str),
    #[error("user name {name} is invalid: {reason}")]
    BadUsername { name: String, reason: String },
    #[error("username {0} is not in rotation_usernames")]
    UserNotInRotation(String),
}

/// The database engine behind the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Postgres,
    Mysql,
    Mariadb,
}

impl Engine {
    fn parse(s: &str) -> Option<Self> {
        // The AWS-standard format uses RDS engine names; accept their common spellings.
        match s.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" | "aurora-postgresql" => Some(Self::Postgres),
            "mysql" | "aurora-mysql" | "aurora" => Some(Self::Mysql),
            "mariadb" => Some(Self::Mariadb),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
            Self::Mariadb => "mariadb",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Self::Postgres => 5432,
            Self::Mysql | Self::Mariadb => 3306,
        }
    }

    fn default_dbname(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mysql | Self::Mariadb => "",
        }
    }

    /// The longest user name the engine accepts (PostgreSQL: NAMEDATALEN - 1 bytes).
    pub fn max_username_len(self) -> usize {
        match self {
            Self::Postgres => 63,
            Self::Mysql | Self::Mariadb => 32,
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user name and its password. `Debug` never shows the password.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: SecretString,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: SecretString) -> Self {
        Self {
            username: username.into(),
            password,
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A JSON object whose `password` key has been taken out. `Debug` lists the keys only, since
/// unknown keys may hold material we know nothing about.
#[derive(Clone)]
struct Fields(Map<String, Value>);

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Fields {
    /// Parses a secret string into a JSON object and takes out the password.
    fn parse(raw: &SecretString) -> Result<(Self, SecretString), SecretError> {
        let raw = raw.expose_secret();
        if raw.len() > MAX_SECRET_BYTES {
            return Err(SecretError::TooLarge);
        }
        let value: Value = serde_json::from_str(raw).map_err(|_| SecretError::NotJson)?;
        let Value::Object(mut map) = value else {
            return Err(SecretError::NotObject);
        };
        let password = match map.remove("password") {
            None => return Err(SecretError::Missing("password")),
            Some(Value::String(p)) => SecretString::from(p),
            Some(_) => {
                return Err(SecretError::WrongType {
                    key: "password",
                    expected: "a string",
                })
            }
        };
        validate_password(&password)?;
        Ok((Self(map), password))
    }

    fn str(&self, key: &'static str) -> Result<Option<&str>, SecretError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(SecretError::WrongType {
                key,
                expected: "a string",
            }),
        }
    }

    fn required_str(&self, key: &'static str) -> Result<&str, SecretError> {
        match self.str(key)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(SecretError::Invalid {
                key,
                reason: "must not be empty".into(),
            }),
            None => Err(SecretError::Missing(key)),
        }
    }

    /// One of two alias keys (AWS-standard name first). Both present and different is an error,
    /// since we could not tell which one the application uses.
    fn alias_str(&self, a: &'static str, b: &'static str) -> Result<Option<&str>, SecretError> {
        match (self.str(a)?, self.str(b)?) {
            (Some(x), Some(y)) if x != y => Err(SecretError::Conflict(a, b)),
            (Some(x), _) | (None, Some(x)) => Ok(Some(x)),
            (None, None) => Ok(None),
        }
    }

    fn port(&self, key: &'static str) -> Result<Option<u16>, SecretError> {
        let wrong = || SecretError::WrongType {
            key,
            expected: "a port number (1-65535) as a number or a string",
        };
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|&n| n > 0)
                .map(Some)
                .ok_or_else(wrong),
            Some(Value::String(s)) => s
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|&n| n > 0)
                .map(Some)
                .ok_or_else(wrong),
            Some(_) => Err(wrong()),
        }
    }

    fn string_list(&self, key: &'static str) -> Result<Vec<String>, SecretError> {
        let wrong = || SecretError::WrongType {
            key,
            expected: "a list of strings",
        };
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or_else(wrong))
                .collect(),
            Some(_) => Err(wrong()),
        }
    }

    /// Serialises these fields plus the given credentials into a new secret string.
    fn render(&self, creds: &Credentials) -> SecretString {
        let mut map = self.0.clone();
        map.insert("username".into(), Value::String(creds.username.clone()));
        map.insert(
            "password".into(),
            Value::String(creds.password.expose_secret().to_owned()),
        );
        SecretString::from(Value::Object(map).to_string())
    }
}

fn validate_password(password: &SecretString) -> Result<(), SecretError> {
    let p = password.expose_secret();
    let invalid = |reason: &str| SecretError::Invalid {
        key: "password",
        reason: reason.into(),
    };
    if p.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if p.len() > MAX_PASSWORD_BYTES {
        return Err(invalid("is too long"));
    }
    if p.chars().any(|c| c.is_control()) {
        return Err(invalid("contains control characters"));
    }
    Ok(())
}

/// Printable form of an untrusted name for error messages: quoted, escaped, truncated.
fn shown(name: &str) -> String {
    let mut s: String = name.chars().take(64).collect();
    if s.len() < name.len() {
        s.push('…');
    }
    format!("{s:?}")
}

/// `host`, `host:port` or `[v6 address]:port` of `reader_hosts`, with the writer's port and
/// database by default.
fn reader_endpoint(text: &str, writer: &Endpoint) -> Result<Endpoint, SecretError> {
    let bad = |why: &str| SecretError::Invalid {
        key: "reader_hosts",
        reason: format!("{}: {why}", shown(text)),
    };
    let text = text.trim();
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        // `[fd00::7]` or `[fd00::7]:5433`
        let (host, rest) = v6.split_once(']').ok_or_else(|| bad("has no closing ]"))?;
        match rest {
            "" => (host, None),
            p => (
                host,
                Some(p.strip_prefix(':').ok_or_else(|| bad("has text after ]"))?),
            ),
        }
    } else {
        match text.rsplit_once(':') {
            _ if text.is_empty() => return Err(bad("is empty")),
            // A bare IPv6 address has colons and no port.
            Some((h, _)) if h.contains(':') => (text, None),
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(bad("is not a host name"));
    }
    let port = match port {
        None => writer.port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad("has no valid port after the colon"))?,
    };
    Ok(Endpoint {
        host: host.to_owned(),
        port,
        dbname: writer.dbname.clone(),
    })
}

/// User names are restricted to what RDS itself allows for master users plus `.`/`-`/`$`. Names
/// are quoted in SQL anyway; the restriction keeps anything that looks like SQL out of the
/// rotation, with an error that says why.
pub fn validate_username(name: &str, engine: Engine) -> Result<(), SecretError> {
    let bad = |reason: String| SecretError::BadUsername {
        name: shown(name),
        reason,
    };
    if name.is_empty() {
        return Err(bad("it is empty".into()));
    }
    if name.len() > engine.max_username_len() {
        return Err(bad(format!(
            "it is longer than {} bytes, the {engine} limit",
            engine.max_username_len()
        )));
    }
    let mut chars = name.chars();
    let first = chars.next().unwrap_or_default();
    if !(first.is_ascii_alphabetic() || first == '_') {
        return Err(bad("it must start with a letter or `_`".into()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.' | '-')))
    {
        return Err(bad(format!(
            "character {c:?} is not allowed (letters, digits, `_`, `$`, `.`, `-`)"
        )));
    }
    Ok(())
}

/// The application's secret: the one rotated, whose AWSCURRENT the application reads.
#[derive(Debug, Clone)]
pub struct AppSecret {
    pub engine: Engine,
    /// The path the application uses, often the RDS Proxy endpoint. The test step logs in here.
    pub endpoint: Endpoint,
    /// The database itself, bypassing the proxy (`direct_host`/`direct_port`), when given.
    /// Passwords are changed here; without it they are changed through `endpoint`.
    pub direct: Option<Endpoint>,
    pub credentials: Credentials,
    /// The users taking turns. Empty or one name: single-user rotation.
    pub rotation_usernames: Vec<String>,
    pub proxy_secret_ids: Vec<String>,
    pub master_secret_id: Option<String>,
    /// The RDS Proxy in front of the database (`proxy_name`): `check` reads its Auth list.
    pub proxy_name: Option<String>,
    /// MySQL/MariaDB: the host of the user's only account (`account_host`), for users that may
    /// not list their accounts and log in as an account other than `user@%`.
    pub account_host: Option<String>,
    /// Every other server that serves the users' logins and keeps sessions of its own (Aurora
    /// readers, read replicas, a hot standby): `reader_hosts`, `host` or `host:port` (the
    /// writer's port by default). The in-use guard looks at each.
    pub readers: Vec<Endpoint>,
    /// The database as RDS names it (`dbClusterIdentifier`, `dbInstanceIdentifier`: AWS's own
    /// RDS secrets carry them), when the secret says.
    pub rds_cluster: Option<String>,
    pub rds_instance: Option<String>,
    fields: Fields,
}

impl AppSecret {
    pub fn parse(raw: &SecretString) -> Result<Self, SecretError> {
        let (fields, password) = Fields::parse(raw)?;
        let engine = match fields.str("engine")? {
            None => Engine::Postgres,
            Some(e) => Engine::parse(e).ok_or_else(|| SecretError::Invalid {
                key: "engine",
                reason: format!("{} is not one of postgres, mysql, mariadb", shown(e)),
            })?,
        };
        if let Some(t) = fields.str("rotation_type")? {
            if t != "AWS RDS" {
                return Err(SecretError::Invalid {
                    key: "rotation_type",
                    reason: format!("{} is not supported (expected \"AWS RDS\")", shown(t)),
                });
            }
        }
        let host = fields
            .alias_str("host", "database_host")?
            .filter(|h| !h.trim().is_empty())
            .ok_or(SecretError::Missing("host` or `database_host"))?;
        let port = match (fields.port("port")?, fields.port("database_port")?) {
            (Some(a), Some(b)) if a != b => {
                return Err(SecretError::Conflict("port", "database_port"))
            }
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => engine.default_port(),
        };
        let dbname = fields
            .alias_str("dbname", "database_name")?
            .unwrap_or(engine.default_dbname())
            .to_owned();
        let endpoint = Endpoint {
            host: host.to_owned(),
            port,
            dbname: dbname.clone(),
        };
        let direct = match fields.str("direct_host")? {
            None => None,
            Some(h) if h.trim().is_empty() => None,
            Some(h) => Some(Endpoint {
                host: h.to_owned(),
                port: fields.port("direct_port")?.unwrap_or(port),
                dbname,
            }),
        };

        let username = fields.required_str("username")?.to_owned();
        validate_username(&username, engine)?;
        let rotation_usernames = fields.string_list("rotation_usernames")?;
        if rotation_usernames.len() > MAX_ROTATION_USERS {
            return Err(SecretError::Invalid {
                key: "rotation_usernames",
                reason: format!(
                    "lists {} users; at most {MAX_ROTATION_USERS} may take turns",
                    rotation_usernames.len()
                ),
            });
        }
        for (i, name) in rotation_usernames.iter().enumerate() {
            validate_username(name, engine)?;
            if rotation_usernames[..i].contains(name) {
                return Err(SecretError::Invalid {
                    key: "rotation_usernames",
                    reason: format!("{} is listed twice", shown(name)),
                });
            }
        }
        if !rotation_usernames.is_empty() && !rotation_usernames.contains(&username) {
            return Err(SecretError::UserNotInRotation(shown(&username)));
        }
        let proxy_secret_ids = fields.string_list("proxy_secret_ids")?;
        if proxy_secret_ids.iter().any(|id| id.trim().is_empty()) {
            return Err(SecretError::Invalid {
                key: "proxy_secret_ids",
                reason: "contains an empty id".into(),
            });
        }
        let master_secret_id = fields
            .alias_str("master_secret_id", "masterarn")?
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned);
        let proxy_name = fields
            .str("proxy_name")?
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned);
        let account_host = fields.str("account_host")?.map(str::to_owned);
        match &account_host {
            Some(h) if h.trim().is_empty() => {
                return Err(SecretError::Invalid {
                    key: "account_host",
                    reason: "is empty".into(),
                })
            }
            Some(_) if engine == Engine::Postgres => {
                return Err(SecretError::Invalid {
                    key: "account_host",
                    reason: "applies to MySQL and MariaDB, whose accounts are per host".into(),
                })
            }
            _ => {}
        }

        let admin_at = direct.as_ref().unwrap_or(&endpoint);
        let readers = fields
            .string_list("reader_hosts")?
            .iter()
            .map(|r| reader_endpoint(r, admin_at))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(w) = readers
            .iter()
            .find(|r| r.port == admin_at.port && r.host.eq_ignore_ascii_case(&admin_at.host))
        {
            return Err(SecretError::Invalid {
                key: "reader_hosts",
                reason: format!("{w} is the writer, whose sessions the guard looks at anyway"),
            });
        }
        if readers.len() > MAX_READERS {
            return Err(SecretError::Invalid {
                key: "reader_hosts",
                reason: format!("lists {} servers; at most {MAX_READERS}", readers.len()),
            });
        }

        let rds_id = |key: &'static str| -> Result<Option<String>, SecretError> {
            match fields.str(key)? {
                Some(id) if id.trim().is_empty() => Err(SecretError::Invalid {
                    key,
                    reason: "is empty".into(),
                }),
                other => Ok(other.map(str::to_owned)),
            }
        };
        let (rds_cluster, rds_instance) = (
            rds_id("dbClusterIdentifier")?,
            rds_id("dbInstanceIdentifier")?,
        );

        Ok(Self {
            readers,
            rds_cluster,
            rds_instance,
            engine,
            endpoint,
            direct,
            credentials: Credentials::new(username, password),
            rotation_usernames,
            proxy_secret_ids,
            master_secret_id,
            proxy_name,
            account_host,
            fields,
        })
    }

    /// Two or more users take turns; otherwise the one user's password changes in place.
    pub fn is_multi_user(&self) -> bool {
        self.rotation_usernames.len() >= 2
    }

    /// The user that takes over: the one after the current user, cyclically.
    pub fn next_username(&self) -> &str {
        if !self.is_multi_user() {
            return &self.credentials.username;
        }
        let i = self
            .rotation_usernames
            .iter()
            .position(|u| *u == self.credentials.username)
            .expect("parse checked that username is in rotation_usernames");
        &self.rotation_usernames[(i + 1) % self.rotation_usernames.len()]
    }

    /// How RDS knows the database: the cluster or instance the secret names, else the host name
    /// of where passwords are changed.
    pub fn rds_db(&self) -> crate::rotation::ports::RdsDb {
        use crate::rotation::ports::RdsDb;
        match (&self.rds_cluster, &self.rds_instance) {
            (Some(c), _) => RdsDb::Cluster(c.clone(), self.admin_endpoint().host.clone()),
            (None, Some(i)) => RdsDb::Instance(i.clone(), self.admin_endpoint().host.clone()),
            (None, None) => RdsDb::Host(self.admin_endpoint().host.clone()),
        }
    }

    /// Where passwords are changed: the database itself when known, else the application's path.
    pub fn admin_endpoint(&self) -> &Endpoint {
        self.direct.as_ref().unwrap_or(&self.endpoint)
    }

    /// The same secret, credentials and every other key unchanged, with the users that take
    /// turns and their proxy secrets (adoption). `master` and `proxy` are added as
    /// `master_secret_id` and `proxy_name` when given.
    pub fn render_adopted(
        &self,
        users: &[String],
        proxy_secret_ids: &[String],
        master: Option<&str>,
        proxy: Option<&str>,
    ) -> SecretString {
        let mut fields = self.fields.clone();
        let list =
            |items: &[String]| Value::Array(items.iter().cloned().map(Value::String).collect());
        fields.0.insert("rotation_usernames".into(), list(users));
        fields
            .0
            .insert("proxy_secret_ids".into(), list(proxy_secret_ids));
        if let Some(m) = master {
            fields
                .0
                .insert("master_secret_id".into(), Value::String(m.to_owned()));
        }
        if let Some(p) = proxy {
            fields
                .0
                .insert("proxy_name".into(), Value::String(p.to_owned()));
        }
        fields.render(&self.credentials)
    }

    /// The same secret, every other key unchanged, with other credentials.
    pub fn render_with(&self, creds: &Credentials) -> SecretString {
        self.fields.render(creds)
    }
}

/// A `{"username","password"}` secret: an RDS Proxy user secret, or a master secret.
#[derive(Debug, Clone)]
pub struct UserSecret {
    pub credentials: Credentials,
    fields: Fields,
}

impl UserSecret {
    pub fn parse(raw: &SecretString) -> Result<Self, SecretError> {
        let (fields, password) = Fields::parse(raw)?;
        let username = fields.required_str("username")?.to_owned();
        Ok(Self {
            credentials: Credentials::new(username, password),
            fields,
        })
    }

    pub fn username(&self) -> &str {
        &self.credentials.username
    }

    pub fn render_with_password(&self, password: &SecretString) -> SecretString {
        self.fields.render(&Credentials::new(
            self.credentials.username.clone(),
            password.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<AppSecret, SecretError> {
        AppSecret::parse(&SecretString::from(v.to_string()))
    }

    fn seed() -> Value {
        json!({
            "rotation_type": "AWS RDS",
            "rotation_usernames": ["app", "app_clone"],
            "proxy_secret_ids": ["arn:aws:secretsmanager:us-east-1:1:secret:a", "arn:aws:secretsmanager:us-east-1:1:secret:b"],
            "database_host": "proxy.local",
            "database_port": "6432",
            "database_name": "shop",
            "username": "app",
            "password": "p'\"\\w",
            "team": {"owner": "payments"}
        })
    }

    #[test]
    fn the_seed_format_parses_with_a_string_port() {
        let s = parse(seed()).unwrap();
        assert_eq!(s.engine, Engine::Postgres);
        assert_eq!(s.endpoint.host, "proxy.local");
        assert_eq!(s.endpoint.port, 6432);
        assert_eq!(s.endpoint.dbname, "shop");
        assert_eq!(s.next_username(), "app_clone");
        assert_eq!(s.proxy_secret_ids.len(), 2);
        assert_eq!(s.credentials.password.expose_secret(), "p'\"\\w");
    }

    #[test]
    fn the_aws_standard_format_parses_with_a_numeric_port() {
        let s = parse(
            json!({"engine": "postgres", "host": "db", "port": 5433, "dbname": "d",
            "username": "u", "password": "x", "masterarn": "arn:m"}),
        )
        .unwrap();
        assert_eq!(s.endpoint.port, 5433);
        assert_eq!(s.master_secret_id.as_deref(), Some("arn:m"));
        assert!(!s.is_multi_user());
        assert_eq!(s.next_username(), "u");
    }

    #[test]
    fn readers_take_the_writers_port_and_database_unless_they_name_a_port() {
        let mut base = seed();
        base["direct_host"] = json!("writer.local");
        base["direct_port"] = json!(5432);
        let mut v = base.clone();
        v["reader_hosts"] = json!([
            "reader-1.local",
            "standby.local:5433",
            "[fd00::7]:5434",
            "fd00::8",
            "[fd00::9]"
        ]);
        let readers: Vec<String> = parse(v)
            .unwrap()
            .readers
            .iter()
            .map(|r| format!("{r}/{}", r.dbname))
            .collect();
        assert_eq!(
            readers,
            [
                "reader-1.local:5432/shop",
                "standby.local:5433/shop",
                "fd00::7:5434/shop",
                "fd00::8:5432/shop",
                "fd00::9:5432/shop"
            ]
        );
        for bad in [
            json!([""]),
            json!(["r:0"]),
            json!(["r:x"]),
            json!(["a b"]),
            json!("r"),
            json!(["[fd00::7"]),
            // The writer itself: its sessions are the writer's look.
            json!(["writer.local"]),
        ] {
            let mut v = base.clone();
            v["reader_hosts"] = bad.clone();
            assert!(parse(v).is_err(), "{bad}");
        }
        let mut v = seed();
        v["reader_hosts"] = json!((0..16).map(|i| format!("r{i}")).collect::<Vec<_>>());
        assert!(parse(v).unwrap_err().to_string().contains("at most 15"));
    }

    #[test]
    fn next_user_wraps_around() {
        let mut v = seed();
        v["username"] = json!("app_clone");
        assert_eq!(parse(v).unwrap().next_username(), "app");
    }

    #[test]
    fn rendering_keeps_unknown_keys_and_changes_only_the_credentials() {
        let s = parse(seed()).unwrap();
        let out = s.render_with(&Credentials::new("app_clone", SecretString::from("new")));
        let v: Value = serde_json::from_str(out.expose_secret()).unwrap();
        let mut expected = seed();
        expected["username"] = json!("app_clone");
        expected["password"] = json!("new");
        assert_eq!(v, expected);
    }

    #[test]
    fn adoption_adds_the_rotation_keys_and_keeps_the_credentials_and_the_rest() {
        let v = json!({"engine": "postgres", "host": "db", "port": 5432, "dbname": "d",
            "username": "u", "password": "p'w", "team": "x"});
        let s = parse(v.clone()).unwrap();
        let out = s.render_adopted(
            &["u".into(), "u_clone".into()],
            &["arn:a".into(), "arn:b".into()],
            Some("arn:m"),
            Some("proxy1"),
        );
        let got: Value = serde_json::from_str(out.expose_secret()).unwrap();
        let mut want = v;
        want["rotation_usernames"] = json!(["u", "u_clone"]);
        want["proxy_secret_ids"] = json!(["arn:a", "arn:b"]);
        want["master_secret_id"] = json!("arn:m");
        want["proxy_name"] = json!("proxy1");
        assert_eq!(got, want);
        let adopted = AppSecret::parse(&out).unwrap();
        assert!(adopted.is_multi_user());
        assert_eq!(adopted.proxy_name.as_deref(), Some("proxy1"));
        assert_eq!(adopted.next_username(), "u_clone");
    }

    #[test]
    fn bad_secrets_get_one_clear_error() {
        let cases: Vec<(Value, SecretError)> = vec![
            (json!([1]), SecretError::NotObject),
            (
                {
                    let mut v = seed();
                    v.as_object_mut().unwrap().remove("password");
                    v
                },
                SecretError::Missing("password"),
            ),
            (
                {
                    let mut v = seed();
                    v["password"] = json!(12);
                    v
                },
                SecretError::WrongType {
                    key: "password",
                    expected: "a string",
                },
            ),
            (
                {
                    let mut v = seed();
                    v["database_port"] = json!("http");
                    v
                },
                SecretError::WrongType {
                    key: "database_port",
                    expected: "a port number (1-65535) as a number or a string",
                },
            ),
            (
                {
                    let mut v = seed();
                    v["username"] = json!("nobody");
                    v
                },
                SecretError::UserNotInRotation("\"nobody\"".into()),
            ),
            (
                {
                    let mut v = seed();
                    v["rotation_usernames"] = json!("app");
                    v
                },
                SecretError::WrongType {
                    key: "rotation_usernames",
                    expected: "a list of strings",
                },
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(parse(value).unwrap_err(), expected);
        }
        assert_eq!(
            AppSecret::parse(&SecretString::from("not json")).unwrap_err(),
            SecretError::NotJson
        );
    }

    #[test]
    fn sql_looking_user_names_are_rejected() {
        for name in [
            "app\"; DROP ROLE x; --",
            "a b",
            "1abc",
            "app'",
            "",
            &"x".repeat(64),
        ] {
            let mut v = seed();
            v["rotation_usernames"] = json!([name, "app"]);
            v["username"] = json!("app");
            assert!(
                matches!(parse(v).unwrap_err(), SecretError::BadUsername { .. }),
                "{name:?} was accepted"
            );
        }
    }

    #[test]
    fn debug_output_never_shows_a_password() {
        let s = parse(seed()).unwrap();
        let u = UserSecret::parse(&SecretString::from(
            json!({"username": "app", "password": "hunter2-secret"}).to_string(),
        ))
        .unwrap();
        let printed = format!("{s:?} {u:?} {:?}", s.credentials);
        assert!(
            !printed.contains("p'\"\\w") && !printed.contains("hunter2"),
            "{printed}"
        );
        assert!(printed.contains("app"));
    }
}
