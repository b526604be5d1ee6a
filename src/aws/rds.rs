//! RDS Proxy's list of secrets (DescribeDBProxies), for `check` and `adopt`.

use async_trait::async_trait;
use aws_sdk_rds::Client;

use super::failure;
use crate::adopt::ports::{ProxyAuth, ProxyDirectory, ProxyError};

pub struct RdsProxies {
    client: Client,
}

impl RdsProxies {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            client: Client::from_conf(
                aws_sdk_rds::config::Builder::from(config)
                    .interceptor(super::CountCalls)
                    .build(),
            ),
        }
    }
}

#[async_trait]
impl ProxyDirectory for RdsProxies {
    async fn auth(&self, proxy: &str) -> Result<Vec<ProxyAuth>, ProxyError> {
        let out = match self
            .client
            .describe_db_proxies()
            .db_proxy_name(proxy)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let f = failure(&e);
                return Err(match f.code.as_deref() {
                    _ if f.transient => ProxyError::Unavailable(f.message),
                    Some("DBProxyNotFoundFault") => ProxyError::NotFound(proxy.to_owned()),
                    Some(
                        "AccessDenied" | "AccessDeniedException" | "UnrecognizedClientException",
                    ) => ProxyError::Denied(f.message),
                    _ => ProxyError::Refused(f.message),
                });
            }
        };
        let Some(p) = out.db_proxies().first() else {
            return Err(ProxyError::NotFound(proxy.to_owned()));
        };
        Ok(p.auth()
            .iter()
            .filter_map(|a| {
                Some(ProxyAuth {
                    secret_arn: a.secret_arn()?.to_owned(),
                    iam_auth: a.iam_auth().map(|x| x.as_str().to_owned()),
                    client_password_auth_type: a
                        .client_password_auth_type()
                        .map(|x| x.as_str().to_owned()),
                    description: a.description().map(str::to_owned),
                })
            })
            .collect())
    }
}
