//! Stand-ins in front of the stack: a relay to PostgreSQL that starts later, and fault proxies
//! in front of moto.

use std::time::Duration;

use super::stack;

/// A TCP relay to PostgreSQL on a port of its own, started later: a database that is "down"
/// until `start` is called.
pub struct Relay {
    pub port: u16,
}

impl Relay {
    pub fn reserve() -> Self {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Self {
            port: l.local_addr().unwrap().port(),
        }
    }

    pub async fn start(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("the relay port is still free");
        let target = (stack().pg_host.clone(), stack().pg_port);
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
    }
}

/// A fault proxy in front of moto: `faults` at random, and the refusals a test sets.
pub async fn fault_proxy(faults: aws_fault_proxy::Faults) -> aws_fault_proxy::FaultProxy {
    let upstream: std::net::SocketAddr = stack()
        .aws_endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("AWS_ENDPOINT_URL is http://host:port");
    aws_fault_proxy::start("127.0.0.1:0".parse().unwrap(), upstream, faults)
        .await
        .unwrap()
}

/// A fault proxy in front of moto with no random faults: only the refusals a test sets.
pub async fn refusing_proxy() -> aws_fault_proxy::FaultProxy {
    fault_proxy(aws_fault_proxy::Faults {
        rate: 0.0,
        slow_delay: Duration::ZERO,
        fixed_delay: Duration::ZERO,
    })
    .await
}

/// A TCP relay that forwards to `target` until `stall` is called, then holds every connection,
/// old and new, without answering: a network that goes silent under a session already open.
#[derive(Clone)]
pub struct StallingRelay {
    pub port: u16,
    silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StallingRelay {
    pub async fn start(target: (String, u16)) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = std::sync::Arc::new(AtomicBool::new(false));
        let flag = silent.clone();
        // One direction: what is read is written on, unless the relay went silent meanwhile.
        async fn pump(
            mut from: tokio::net::tcp::OwnedReadHalf,
            mut to: tokio::net::tcp::OwnedWriteHalf,
            silent: std::sync::Arc<AtomicBool>,
        ) {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                while silent.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (target, silent) = (target.clone(), flag.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, silent.clone()), pump(sr, cw, silent));
                });
            }
        });
        Self { port, silent }
    }

    /// From now on nothing passes, on connections open or new.
    pub fn stall(&self) {
        self.silent.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Traffic passes again.
    pub fn resume(&self) {
        self.silent
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A TCP port that accepts connections and never answers on them: a drop rule after the
/// handshake, an overloaded proxy, a half-open connection.
pub fn silent_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().map_while(Result::ok) {
            held.push(conn);
        }
    });
    port
}
