//! Verified TLS against a real PostgreSQL: a CA and a server certificate are made here, the local
//! stack's server is switched to them (ssl settings reload without a restart), and the adapter is
//! checked in each mode. One test function, because it changes the shared server's TLS settings.

mod common;

use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rds_rotator::db::postgres::Postgres;
use rds_rotator::db::tls::{DbTls, TlsMode};
use rds_rotator::rotation::ports::{Database, DbError};
use rds_rotator::secret::{Credentials, Endpoint, Engine};
use secrecy::SecretString;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    Ca {
        cert: params.self_signed(&key).unwrap(),
        key,
    }
}

async fn login(mode: TlsMode, bundle: Option<&Path>, host: &str) -> Result<(), DbError> {
    let s = stack();
    let db = Postgres::new(DbTls::new(mode, bundle).unwrap());
    let at = Endpoint {
        host: host.into(),
        port: s.pg_port,
        dbname: "postgres".into(),
    };
    let creds = Credentials::new(
        s.admin_user.clone(),
        SecretString::from(s.admin_password.clone()),
    );
    db.check_login(Engine::Postgres, &at, &creds).await
}

async fn set_ssl(on: Option<(&Path, &Path)>) {
    // The server's configuration: on RDS a parameter group, so the superuser here.
    let db = superuser("postgres").await;
    // One statement each: ALTER SYSTEM refuses to run in the implicit transaction of a batch.
    let statements = match on {
        Some((cert, key)) => vec![
            format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
            format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
            "ALTER SYSTEM SET ssl = on".to_owned(),
        ],
        None => vec![
            "ALTER SYSTEM RESET ssl".to_owned(),
            "ALTER SYSTEM RESET ssl_cert_file".to_owned(),
            "ALTER SYSTEM RESET ssl_key_file".to_owned(),
        ],
    };
    for sql in statements {
        db.batch_execute(&sql).await.unwrap();
    }
    db.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    // The reload is a signal: wait until the server says it took effect.
    let want = if on.is_some() { "on" } else { "off" };
    for _ in 0..100 {
        let fresh = admin("postgres").await;
        let row = fresh.query_one("SHOW ssl", &[]).await.unwrap();
        if row.get::<_, String>(0) == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "PostgreSQL did not switch ssl {want}; see its log at {}",
        stack().pg_log
    );
}

fn tls_reason(r: Result<(), DbError>) -> String {
    match r {
        Err(DbError::Tls { reason, .. }) => reason,
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[tokio::test]
async fn verify_full_trusts_only_the_right_ca_and_the_right_name_and_plaintext_needs_disable() {
    // 1. A server without TLS: only an explicit `disable` connects.
    set_ssl(None).await;
    login(TlsMode::Disable, None, "127.0.0.1").await.unwrap();
    let reason = tls_reason(login(TlsMode::VerifyFull, None, "127.0.0.1").await);
    assert!(reason.contains("server does not support TLS"), "{reason}");
    let reason = tls_reason(login(TlsMode::Require, None, "127.0.0.1").await);
    assert!(reason.contains("server does not support TLS"), "{reason}");

    // 2. A CA and a server certificate for `localhost`, made here.
    let dir = std::env::temp_dir().join(format!("rt-tls-{}", suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let right = ca("rds-rotator test CA");
    let wrong = ca("some other CA");
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &right.cert, &right.key)
        .unwrap();
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert, server.pem()).unwrap();
    std::fs::write(&key, server_key.serialize_pem()).unwrap();
    // PostgreSQL reads the key as its own user and wants it private.
    let data_dir: String = admin("postgres")
        .await
        .query_one("SHOW data_directory", &[])
        .await
        .unwrap()
        .get(0);
    let owner = std::fs::metadata(&data_dir).unwrap();
    for f in [&cert, &key] {
        chown(f, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (right_bundle, wrong_bundle) = (dir.join("right-ca.pem"), dir.join("wrong-ca.pem"));
    std::fs::write(&right_bundle, right.cert.pem()).unwrap();
    std::fs::write(&wrong_bundle, wrong.cert.pem()).unwrap();

    set_ssl(Some((&cert, &key))).await;
    let outcome = async {
        // 3. verify-full with the right CA bundle and the certificate's name: connects.
        login(TlsMode::VerifyFull, Some(&right_bundle), "localhost").await?;
        Ok::<_, DbError>(())
    }
    .await;
    let wrong_ca = login(TlsMode::VerifyFull, Some(&wrong_bundle), "localhost").await;
    let public_roots_only = login(TlsMode::VerifyFull, None, "localhost").await;
    let wrong_name = login(TlsMode::VerifyFull, Some(&right_bundle), "127.0.0.1").await;
    let require = login(TlsMode::Require, None, "127.0.0.1").await;
    let plaintext = login(TlsMode::Disable, None, "127.0.0.1").await;
    set_ssl(None).await;

    outcome.expect("verify-full with the right CA connects");
    // 4. The wrong CA, or only the public roots: refused, saying why.
    for (what, r) in [("wrong CA", wrong_ca), ("public roots", public_roots_only)] {
        let reason = tls_reason(r);
        assert!(
            reason.contains("invalid peer certificate") && reason.contains("UnknownIssuer"),
            "{what}: {reason}"
        );
    }
    // 5. A name the certificate does not carry: refused.
    let reason = tls_reason(wrong_name);
    assert!(
        reason.contains("certificate not valid for name"),
        "{reason}"
    );
    // `require` encrypts without verifying; `disable` still works where the server allows it.
    require.expect("require connects to a TLS server");
    plaintext.expect("disable connects when the server allows plaintext");
}
