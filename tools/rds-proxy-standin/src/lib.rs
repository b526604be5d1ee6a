//! A local stand-in for Amazon RDS Proxy's authentication, PostgreSQL wire protocol only.
//!
//! Like RDS Proxy, it holds one Secrets Manager secret per database user (`{"username","password"}`):
//! - a client's login is checked against the secret of the user it names (SCRAM-SHA-256, as RDS
//!   Proxy offers), with RDS Proxy's error for a user it has no secret for;
//! - the backend connection to PostgreSQL is opened with that secret's credentials, then bytes are
//!   relayed both ways.
//!
//! It re-reads its secrets only every `refresh` interval, to mimic a proxy that picks up a changed
//! secret late (how late RDS Proxy is, is not documented).
//!
//! Connection pooling is opt-in ([`Config::pool`]). Without it, every client connection gets a
//! backend connection of its own, logged in afresh with the secret's credentials. With it, as RDS
//! Proxy does, a backend connection outlives its client: when the client says goodbye (Terminate),
//! the backend connection is kept idle, keyed by (user, database), and the next client that logs
//! in as that user to that database gets it without a new backend login. So a login through the
//! proxy can succeed although the database no longer accepts (or never accepted) the password in
//! the proxy's secret: the client is still checked against the secret, the database is not asked.
//! Like RDS Proxy, the stand-in does not reset a pooled connection's session state (`SET`s,
//! prepared statements, `LISTEN`s, temporary tables stay); it pools a connection only when it is
//! idle (not in a transaction) with every query answered, and drops it otherwise. A pooled
//! connection keeps the startup parameters (and so the `ParameterStatus` and `BackendKeyData`
//! messages, replayed to each new client) of the client that opened it. Pooled connections are
//! kept until they are reused or the server closes them; there is no limit and no idle timeout.
//!
//! What it does not do: TLS, multiplexing (transaction-level sharing of a backend connection by
//! several clients), pinning, IAM authentication, cancel requests, MySQL.

mod scram;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
const PROTOCOL_3_0: i32 = 196_608;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The database behind the proxy.
    pub backend_host: String,
    pub backend_port: u16,
    /// Secrets Manager ids of the user secrets.
    pub secret_ids: Vec<String>,
    /// How often secrets are re-read.
    pub refresh: Duration,
    /// Pool backend connections as RDS Proxy does (see the crate docs): a client that logs in as a
    /// user to a database with an idle backend connection gets that one, without a new backend
    /// login. This is how a login through RDS Proxy can succeed with a password the database no
    /// longer accepts; tests that must see that turn it on. Off, every client gets a fresh
    /// backend login with the secret's credentials, which shows a wrong secret at once.
    pub pool: bool,
}

/// A user's credentials as the proxy last read them, with its SCRAM keys derived once.
struct Entry {
    password: String,
    keys: scram::ServerKeys,
}

type Cache = Arc<RwLock<HashMap<String, Arc<Entry>>>>;

/// A backend connection waiting for its next client, with what the backend sent after
/// AuthenticationOk when it was opened (ParameterStatus, BackendKeyData, ..., ReadyForQuery),
/// replayed to each client that gets it.
struct Idle {
    stream: TcpStream,
    startup: Vec<u8>,
}

/// Idle backend connections by (user, database).
#[derive(Default)]
struct Pool(Mutex<HashMap<(String, String), Vec<Idle>>>);

impl Pool {
    fn put(&self, key: (String, String), idle: Idle) {
        self.0.lock().unwrap().entry(key).or_default().push(idle);
    }

    /// An idle connection for `key` that the server has not closed, as far as a look at its
    /// socket tells; those it has closed are dropped.
    fn take(&self, key: &(String, String)) -> Option<Idle> {
        loop {
            let idle = self.0.lock().unwrap().get_mut(key)?.pop()?;
            match still_open(idle.stream) {
                Some(stream) => {
                    return Some(Idle {
                        stream,
                        startup: idle.startup,
                    })
                }
                None => debug!(
                    user = %key.0,
                    database = %key.1,
                    "dropping a pooled backend connection that the server closed"
                ),
            }
        }
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().values().map(Vec::len).sum()
    }
}

/// Whether an idle backend connection is still usable: nothing to read on it (a server that
/// ends a session sends a FATAL ErrorResponse, then closes). A non-blocking peek on the socket
/// itself, not on tokio's cached readiness, which may not have caught up yet. Anything readable
/// (even an asynchronous notice) disqualifies it. A server that closes the connection just after
/// this look fails that client's session instead.
fn still_open(stream: TcpStream) -> Option<TcpStream> {
    let stream = stream.into_std().ok()?; // stays non-blocking
    match stream.peek(&mut [0u8; 1]) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => TcpStream::from_std(stream).ok(),
        _ => None,
    }
}

/// A running stand-in.
#[derive(Clone)]
pub struct StandIn {
    pub addr: SocketAddr,
    /// The Auth list: what `attach` changes.
    secret_ids: Arc<std::sync::RwLock<Vec<String>>>,
    refresh_now: Arc<Notify>,
    generation: watch::Receiver<u64>,
    pool: Arc<Pool>,
}

impl StandIn {
    /// How many backend connections wait idle in the pool (always 0 without [`Config::pool`]). A
    /// connection goes back to the pool a moment after its client's Terminate, asynchronously.
    pub fn pooled(&self) -> usize {
        self.pool.len()
    }

    /// Adds a secret to the proxy's Auth list, as `aws rds modify-db-proxy --auth` does, and
    /// reads it.
    pub async fn attach(&self, secret_id: &str) {
        {
            let mut ids = self.secret_ids.write().unwrap();
            if !ids.iter().any(|i| i == secret_id) {
                ids.push(secret_id.to_owned());
            }
        }
        self.refresh_now().await;
    }

    /// Re-reads the secrets now and waits until that is done.
    pub async fn refresh_now(&self) {
        let mut generation = self.generation.clone();
        let seen = *generation.borrow_and_update();
        self.refresh_now.notify_one();
        let _ = generation.wait_for(|g| *g > seen).await;
    }

    /// Starts a stand-in on a runtime of its own, in its own thread, so that it keeps serving
    /// while the caller blocks (tests that run the CLI, for example). It lives as long as the
    /// process.
    pub fn spawn_in_thread(config: Config, sm: aws_sdk_secretsmanager::Client) -> Result<StandIn> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("rds-proxy-standin".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a runtime for the stand-in");
                rt.block_on(async move {
                    let _ = tx.send(start(config, sm).await);
                    std::future::pending::<()>().await;
                });
            })?;
        rx.recv().map_err(|_| anyhow!("the stand-in thread died"))?
    }
}

async fn load(sm: &aws_sdk_secretsmanager::Client, ids: &[String], cache: &Cache) -> Result<()> {
    let mut fresh = HashMap::new();
    for id in ids {
        let out = sm
            .get_secret_value()
            .secret_id(id)
            .version_stage("AWSCURRENT")
            .send()
            .await
            .with_context(|| format!("reading proxy secret {id}"))?;
        let value: serde_json::Value =
            serde_json::from_str(out.secret_string().unwrap_or_default())
                .with_context(|| format!("proxy secret {id} is not JSON"))?;
        let (Some(user), Some(password)) = (value["username"].as_str(), value["password"].as_str())
        else {
            bail!("proxy secret {id} lacks username or password");
        };
        // Keys are derived once per secret version, not per login, to keep logins cheap.
        let unchanged = cache
            .read()
            .unwrap()
            .get(user)
            .filter(|e| e.password == password)
            .cloned();
        let entry = unchanged.unwrap_or_else(|| {
            Arc::new(Entry {
                password: password.to_owned(),
                keys: scram::ServerKeys::derive(password),
            })
        });
        fresh.insert(user.to_owned(), entry);
    }
    *cache.write().unwrap() = fresh;
    Ok(())
}

/// Loads the secrets, then serves on the current runtime.
pub async fn start(config: Config, sm: aws_sdk_secretsmanager::Client) -> Result<StandIn> {
    let cache: Cache = Arc::default();
    load(&sm, &config.secret_ids, &cache).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let refresh_now = Arc::new(Notify::new());
    let (gen_tx, generation) = watch::channel(0u64);

    let secret_ids = Arc::new(std::sync::RwLock::new(config.secret_ids.clone()));
    let (ids, refresh, notify, refresh_cache) = (
        secret_ids.clone(),
        config.refresh,
        refresh_now.clone(),
        cache.clone(),
    );
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(refresh) => {}
                _ = notify.notified() => {}
            }
            let now: Vec<String> = ids.read().unwrap().clone();
            match load(&sm, &now, &refresh_cache).await {
                Ok(()) => debug!("secrets refreshed"),
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "secret refresh failed; keeping the old ones")
                }
            }
            gen_tx.send_modify(|g| *g += 1);
        }
    });

    let backend = (config.backend_host.clone(), config.backend_port);
    let pool = Arc::new(Pool::default());
    let pooling = config.pool.then(|| pool.clone());
    tokio::spawn(async move {
        loop {
            let (client, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (cache, backend, pool) = (cache.clone(), backend.clone(), pooling.clone());
            tokio::spawn(async move {
                if let Err(e) = serve(client, &cache, &backend, pool.as_deref()).await {
                    debug!(%peer, error = %format!("{e:#}"), "connection ended with an error");
                }
            });
        }
    });
    info!(%addr, pool = config.pool, "RDS Proxy stand-in listening");
    Ok(StandIn {
        addr,
        secret_ids,
        refresh_now,
        generation,
        pool,
    })
}

/// Reads one typed message: (type, body).
async fn read_message(s: &mut TcpStream) -> Result<(u8, Vec<u8>)> {
    let kind = s.read_u8().await?;
    let len = s.read_i32().await?;
    if !(4..=1 << 20).contains(&len) {
        bail!("bad message length {len}");
    }
    let mut body = vec![0; len as usize - 4];
    s.read_exact(&mut body).await?;
    Ok((kind, body))
}

async fn write_message(s: &mut TcpStream, kind: u8, body: &[u8]) -> Result<()> {
    let mut buf = Vec::with_capacity(body.len() + 5);
    buf.push(kind);
    buf.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    buf.extend_from_slice(body);
    s.write_all(&buf).await?;
    Ok(())
}

async fn auth_request(s: &mut TcpStream, code: i32, data: &[u8]) -> Result<()> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(data);
    write_message(s, b'R', &body).await
}

/// A FATAL ErrorResponse, as PostgreSQL and RDS Proxy send them.
async fn fatal(s: &mut TcpStream, code: &str, message: &str) -> Result<()> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    write_message(s, b'E', &body).await
}

fn cstrings(mut bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(end) = bytes.iter().position(|&b| b == 0) {
        out.push(String::from_utf8_lossy(&bytes[..end]).into_owned());
        bytes = &bytes[end + 1..];
    }
    out
}

/// The startup packet's parameters, after declining SSL and GSS encryption.
async fn read_startup(s: &mut TcpStream) -> Result<Option<Vec<(String, String)>>> {
    loop {
        let len = s.read_i32().await?;
        if !(8..=10_000).contains(&len) {
            bail!("bad startup length {len}");
        }
        let mut body = vec![0; len as usize - 4];
        s.read_exact(&mut body).await?;
        let code = i32::from_be_bytes(body[..4].try_into().expect("4 bytes"));
        match code {
            SSL_REQUEST | GSSENC_REQUEST => s.write_all(b"N").await?,
            CANCEL_REQUEST => return Ok(None),
            PROTOCOL_3_0 => {
                let strings = cstrings(&body[4..]);
                return Ok(Some(
                    strings
                        .chunks_exact(2)
                        .map(|kv| (kv[0].clone(), kv[1].clone()))
                        .collect(),
                ));
            }
            other => bail!("unsupported protocol {other}"),
        }
    }
}

async fn serve(
    mut client: TcpStream,
    cache: &Cache,
    backend: &(String, u16),
    pool: Option<&Pool>,
) -> Result<()> {
    let Some(params) = read_startup(&mut client).await? else {
        return Ok(()); // cancel requests are not supported
    };
    let param = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let user = param("user").ok_or_else(|| anyhow!("startup without a user"))?;
    let entry = cache.read().unwrap().get(&user).cloned();
    let Some(entry) = entry else {
        let msg = format!("This RDS proxy has no credentials for the role {user}. Check the credentials for this role and try again.");
        fatal(&mut client, "28000", &msg).await?;
        return Ok(());
    };
    if !scram::authenticate(&mut client, &entry.keys).await? {
        fatal(
            &mut client,
            "28P01",
            &format!("password authentication failed for user \"{user}\""),
        )
        .await?;
        return Ok(());
    }
    let Some(pool) = pool else {
        let Some(mut server) =
            open_backend(&mut client, backend, &params, &user, &entry.password).await?
        else {
            return Ok(());
        };
        auth_request(&mut client, 0, &[]).await?; // AuthenticationOk; the backend's own status follows
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        return Ok(());
    };

    // PostgreSQL's default database is the user's name.
    let key = (
        user.clone(),
        param("database").unwrap_or_else(|| user.clone()),
    );
    let (mut server, startup) = match pool.take(&key) {
        Some(idle) => {
            debug!(%user, database = %key.1, "reusing a pooled backend connection");
            (idle.stream, idle.startup)
        }
        None => {
            let Some(mut server) =
                open_backend(&mut client, backend, &params, &user, &entry.password).await?
            else {
                return Ok(());
            };
            let (startup, ready) = backend_startup(&mut server).await;
            if let Err(e) = ready {
                // Whatever the backend said (its ErrorResponse, say) goes on to the client, as
                // without pooling; the connection is not pooled.
                auth_request(&mut client, 0, &[]).await?;
                client.write_all(&startup).await?;
                return Err(e);
            }
            (server, startup)
        }
    };
    auth_request(&mut client, 0, &[]).await?;
    client.write_all(&startup).await?;
    if relay_pooled(client, &mut server).await {
        debug!(%user, database = %key.1, "backend connection back in the pool");
        pool.put(
            key,
            Idle {
                stream: server,
                startup,
            },
        );
    }
    Ok(())
}

/// A new backend connection logged in with the secret's credentials, right after
/// AuthenticationOk; `None` when the client has been told why there is none.
async fn open_backend(
    client: &mut TcpStream,
    backend: &(String, u16),
    params: &[(String, String)],
    user: &str,
    password: &str,
) -> Result<Option<TcpStream>> {
    match connect_backend(backend, params, user, password).await {
        Ok(s) => Ok(Some(s)),
        Err(Backend::Refused(error_body)) => {
            // The backend refused the proxy's own credentials: pass its error on, as RDS Proxy does.
            write_message(client, b'E', &error_body).await?;
            Ok(None)
        }
        Err(Backend::Io(e)) => {
            fatal(
                client,
                "08006",
                &format!("the proxy could not reach the database: {e:#}"),
            )
            .await?;
            Ok(None)
        }
    }
}

/// What the backend sends after AuthenticationOk, up to and including ReadyForQuery, raw; with
/// an error when it ends otherwise (an ErrorResponse, which is then the last message kept).
async fn backend_startup(server: &mut TcpStream) -> (Vec<u8>, Result<()>) {
    let mut kept = Vec::new();
    loop {
        let (kind, body) = match read_message(server).await {
            Ok(m) => m,
            Err(e) => {
                return (
                    kept,
                    Err(e.context("reading the backend's startup messages")),
                )
            }
        };
        kept.push(kind);
        kept.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        kept.extend_from_slice(&body);
        match kind {
            b'Z' => return (kept, Ok(())),
            b'E' => {
                return (
                    kept,
                    Err(anyhow!("the backend failed the session's startup")),
                )
            }
            _ => {}
        }
    }
}

/// How long a backend connection whose client said goodbye with queries unanswered may take to
/// answer them before it is dropped rather than pooled.
const DRAIN: Duration = Duration::from_secs(2);

/// Relays one client session on a backend connection that may be pooled after it. Client to
/// backend goes message by message, so that the client's Terminate is seen and kept from the
/// backend; backend to client goes as it comes, watched for ReadyForQuery. True when the client
/// said goodbye (Terminate) and the backend connection is fit for the next client: every query
/// answered (waiting up to [`DRAIN`] for the answers), at a message boundary, not in a
/// transaction. False when the session ended otherwise (client gone without Terminate, backend
/// closed, any error): then the caller drops the backend connection.
async fn relay_pooled(client: TcpStream, server: &mut TcpStream) -> bool {
    let (client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.split();
    // ReadyForQuery messages owed by the backend: one per Query, Sync and FunctionCall sent.
    let mut asked: u64 = 0;
    let mut seen = Frames::default();
    let mut buf = vec![0u8; 16 * 1024];

    let to_backend = async {
        let mut from = tokio::io::BufReader::new(client_read);
        loop {
            let mut header = [0u8; 5];
            from.read_exact(&mut header).await?;
            let kind = header[0];
            let len = i32::from_be_bytes(header[1..].try_into().expect("4 bytes"));
            if len < 4 {
                bail!("bad message length {len} from the client");
            }
            if kind == b'X' {
                return Ok(());
            }
            if matches!(kind, b'Q' | b'S' | b'F') {
                asked += 1;
            }
            let body = len as u64 - 4;
            if body <= 64 * 1024 {
                let mut message = header.to_vec();
                message.resize(5 + body as usize, 0);
                from.read_exact(&mut message[5..]).await?;
                server_write.write_all(&message).await?;
            } else {
                server_write.write_all(&header).await?;
                let copied =
                    tokio::io::copy(&mut (&mut from).take(body), &mut server_write).await?;
                if copied != body {
                    bail!("the client went away in the middle of a message");
                }
            }
        }
    };
    // Cancel-safe where it is cancelled (in `read`): every byte read from the backend has been
    // through `seen` first.
    let to_client = async {
        loop {
            let n = server_read.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            seen.feed(&buf[..n]);
            client_write.write_all(&buf[..n]).await?;
        }
    };
    let said_goodbye = tokio::select! {
        r = to_backend => match r {
            Ok(()) => true,
            Err(e) => {
                debug!(error = %format!("{e:#}"), "client session ended without Terminate");
                false
            }
        },
        r = to_client => {
            debug!(result = ?r, "the backend or the client connection ended");
            false
        }
    };
    if !said_goodbye {
        return false;
    }
    drop(client_write);
    let drained = tokio::time::timeout(DRAIN, async {
        while seen.ready < asked || !seen.at_boundary() {
            let n = server_read.read(&mut buf).await?;
            if n == 0 {
                return Ok(false);
            }
            seen.feed(&buf[..n]);
        }
        Ok::<_, std::io::Error>(true)
    })
    .await;
    let fit = matches!(drained, Ok(Ok(true))) && !seen.broken && seen.status == b'I';
    if !fit {
        debug!(
            drained = ?drained,
            status = %(seen.status as char),
            "not pooling a backend connection that is not idle"
        );
    }
    fit
}

/// Follows the backend's message stream as it comes, in chunks of any size, without buffering it:
/// counts ReadyForQuery messages and keeps the last one's transaction status.
struct Frames {
    header: [u8; 5],
    /// Bytes of `header` read so far.
    have: usize,
    kind: u8,
    body: usize,
    /// Body bytes of the current message still to come.
    left: usize,
    ready: u64,
    /// 'I' idle, 'T' in a transaction, 'E' in a failed transaction.
    status: u8,
    /// A message length that cannot be: the stream is not followed any further.
    broken: bool,
}

impl Default for Frames {
    fn default() -> Self {
        Self {
            header: [0; 5],
            have: 0,
            kind: 0,
            body: 0,
            left: 0,
            ready: 0,
            status: b'I', // the session starts idle: the startup's ReadyForQuery said so
            broken: false,
        }
    }
}

impl Frames {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.broken {
            if self.left == 0 {
                let n = (5 - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have < 5 {
                    return;
                }
                self.have = 0;
                let len = i32::from_be_bytes(self.header[1..].try_into().expect("4 bytes"));
                if len < 4 {
                    self.broken = true;
                    return;
                }
                self.kind = self.header[0];
                self.body = len as usize - 4;
                self.left = self.body;
            } else {
                if self.kind == b'Z' && self.left == self.body {
                    self.ready += 1;
                    self.status = bytes[0];
                }
                let n = self.left.min(bytes.len());
                self.left -= n;
                bytes = &bytes[n..];
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }
}

enum Backend {
    Refused(Vec<u8>),
    Io(anyhow::Error),
}

impl From<anyhow::Error> for Backend {
    fn from(e: anyhow::Error) -> Self {
        Backend::Io(e)
    }
}

impl From<std::io::Error> for Backend {
    fn from(e: std::io::Error) -> Self {
        Backend::Io(e.into())
    }
}

/// Opens the backend connection as `user`, answering PostgreSQL's SCRAM (or MD5/cleartext)
/// challenge with the secret's password. Returns the stream right after AuthenticationOk.
async fn connect_backend(
    backend: &(String, u16),
    params: &[(String, String)],
    user: &str,
    password: &str,
) -> Result<TcpStream, Backend> {
    let mut s = TcpStream::connect((backend.0.as_str(), backend.1)).await?;
    s.set_nodelay(true)?;
    let mut buf = BytesMut::new();
    let forwarded = params
        .iter()
        .filter(|(k, _)| k != "user")
        .map(|(k, v)| (k.as_str(), v.as_str()));
    frontend::startup_message(std::iter::once(("user", user)).chain(forwarded), &mut buf)?;
    s.write_all(&buf).await?;
    let mut scram: Option<ScramSha256> = None;
    loop {
        let (kind, body) = read_message(&mut s).await?;
        if kind == b'E' {
            return Err(Backend::Refused(body));
        }
        if kind != b'R' || body.len() < 4 {
            return Err(Backend::Io(anyhow!(
                "unexpected message {:?} during backend authentication",
                kind as char
            )));
        }
        let code = i32::from_be_bytes(body[..4].try_into().expect("4 bytes"));
        let data = &body[4..];
        buf.clear();
        match code {
            0 => return Ok(s),
            3 => frontend::password_message(password.as_bytes(), &mut buf)?,
            5 => {
                let salt: [u8; 4] = data.try_into().map_err(|_| anyhow!("bad MD5 salt"))?;
                let hash = postgres_protocol::authentication::md5_hash(
                    user.as_bytes(),
                    password.as_bytes(),
                    salt,
                );
                frontend::password_message(hash.as_bytes(), &mut buf)?;
            }
            10 => {
                let mechanisms = cstrings(data);
                if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                    return Err(Backend::Io(anyhow!(
                        "backend offers no SCRAM-SHA-256: {mechanisms:?}"
                    )));
                }
                let client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response("SCRAM-SHA-256", client.message(), &mut buf)?;
                scram = Some(client);
            }
            11 => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| anyhow!("SASLContinue before SASL"))?;
                client.update(data)?;
                frontend::sasl_response(client.message(), &mut buf)?;
            }
            12 => {
                scram
                    .as_mut()
                    .ok_or_else(|| anyhow!("SASLFinal before SASL"))?
                    .finish(data)?;
                continue;
            }
            other => {
                return Err(Backend::Io(anyhow!(
                    "unsupported backend authentication {other}"
                )))
            }
        }
        s.write_all(&buf).await?;
    }
}
