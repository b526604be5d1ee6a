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
//! What it does not do: TLS, connection pooling and multiplexing, pinning, IAM authentication,
//! cancel requests, MySQL. Every client connection gets its own backend connection.

mod scram;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
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
}

/// A user's credentials as the proxy last read them, with its SCRAM keys derived once.
struct Entry {
    password: String,
    keys: scram::ServerKeys,
}

type Cache = Arc<RwLock<HashMap<String, Arc<Entry>>>>;

/// A running stand-in.
#[derive(Clone)]
pub struct StandIn {
    pub addr: SocketAddr,
    refresh_now: Arc<Notify>,
    generation: watch::Receiver<u64>,
}

impl StandIn {
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

    let (ids, refresh, notify, refresh_cache) = (
        config.secret_ids.clone(),
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
            match load(&sm, &ids, &refresh_cache).await {
                Ok(()) => debug!("secrets refreshed"),
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "secret refresh failed; keeping the old ones")
                }
            }
            gen_tx.send_modify(|g| *g += 1);
        }
    });

    let backend = (config.backend_host.clone(), config.backend_port);
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
            let (cache, backend) = (cache.clone(), backend.clone());
            tokio::spawn(async move {
                if let Err(e) = serve(client, &cache, &backend).await {
                    debug!(%peer, error = %format!("{e:#}"), "connection ended with an error");
                }
            });
        }
    });
    info!(%addr, "RDS Proxy stand-in listening");
    Ok(StandIn {
        addr,
        refresh_now,
        generation,
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

async fn serve(mut client: TcpStream, cache: &Cache, backend: &(String, u16)) -> Result<()> {
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
    let mut server = match connect_backend(backend, &params, &user, &entry.password).await {
        Ok(s) => s,
        Err(Backend::Refused(error_body)) => {
            // The backend refused the proxy's own credentials: pass its error on, as RDS Proxy does.
            write_message(&mut client, b'E', &error_body).await?;
            return Ok(());
        }
        Err(Backend::Io(e)) => {
            fatal(
                &mut client,
                "08006",
                &format!("the proxy could not reach the database: {e:#}"),
            )
            .await?;
            return Ok(());
        }
    };
    auth_request(&mut client, 0, &[]).await?; // AuthenticationOk; the backend's own status follows
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    Ok(())
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
