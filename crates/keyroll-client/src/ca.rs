//! The certificate authority's calls: `ca init`, issuing workload certificates (admin), a
//! workload's own renewal (`/v1/self/certificate`), and the public bundle and CRLs (text, not
//! JSON, so they are read here without the JSON path of [`Client::call`]).

use keyroll_proto::ca as wire;

use crate::{Answer, Client, ClientError, urlencode};

/// A PEM answer: the text and the bundle version it is.
#[derive(Debug, Clone)]
pub struct PemAnswer {
    /// The PEM text.
    pub pem: String,
    /// `X-Keyroll-Bundle-Version`.
    pub bundle_version: u64,
}

/// Which certificates [`Client::list_certs`] asks for.
#[derive(Debug, Clone, Default)]
pub struct CertFilter {
    /// Only `ENV/SERVICE`'s.
    pub identity: Option<String>,
    /// `live`, `expired` or `revoked`.
    pub state: Option<String>,
    /// Only those this authority signed.
    pub issuer: Option<String>,
    /// The `next_after` of the previous page.
    pub after: Option<String>,
    /// At most this many (1 to 1000).
    pub limit: Option<u32>,
}

impl Client {
    /// `POST /v1/ca/init`.
    pub async fn ca_init(
        &self,
        req: &wire::CaInit,
    ) -> Result<Answer<wire::CaInitialized>, ClientError> {
        self.call(reqwest::Method::POST, "/v1/ca/init", Some(req), None)
            .await
    }

    /// `GET /v1/ca/status`.
    pub async fn ca_status(&self) -> Result<Answer<wire::CaStatus>, ClientError> {
        self.call(reqwest::Method::GET, "/v1/ca/status", None, None)
            .await
    }

    /// `POST /v1/ca/rotate`: the status after the rotation started.
    pub async fn ca_rotate(
        &self,
        req: &wire::CaRotate,
    ) -> Result<Answer<wire::CaStatus>, ClientError> {
        self.call(reqwest::Method::POST, "/v1/ca/rotate", Some(req), None)
            .await
    }

    /// `POST /v1/certs`: the answer carries `key_pem` (once) when no CSR was given.
    pub async fn issue_cert(
        &self,
        req: &wire::IssueCert,
    ) -> Result<Answer<wire::CertIssued>, ClientError> {
        self.call(reqwest::Method::POST, "/v1/certs", Some(req), None)
            .await
    }

    /// `POST /v1/self/certificate`, authenticated by the client's token (a consumer key) or, with
    /// none, by its client certificate.
    pub async fn self_certificate(
        &self,
        req: &wire::SelfCertRequest,
    ) -> Result<Answer<wire::CertIssued>, ClientError> {
        self.call(
            reqwest::Method::POST,
            "/v1/self/certificate",
            Some(req),
            None,
        )
        .await
    }

    /// `POST /v1/certs/revoke`.
    pub async fn revoke_certs(
        &self,
        req: &wire::RevokeCert,
    ) -> Result<Answer<wire::CertsRevoked>, ClientError> {
        self.call(reqwest::Method::POST, "/v1/certs/revoke", Some(req), None)
            .await
    }

    /// `GET /v1/certs` with the filters of `q`.
    pub async fn list_certs(&self, q: &CertFilter) -> Result<Answer<wire::CertList>, ClientError> {
        let limit = q.limit.map(|n| n.to_string());
        let params = [
            ("identity", q.identity.as_deref()),
            ("state", q.state.as_deref()),
            ("issuer", q.issuer.as_deref()),
            ("after", q.after.as_deref()),
            ("limit", limit.as_deref()),
        ];
        let query: Vec<String> = params
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={}", urlencode(v))))
            .collect();
        let path = if query.is_empty() {
            "/v1/certs".to_owned()
        } else {
            format!("/v1/certs?{}", query.join("&"))
        };
        self.call(reqwest::Method::GET, &path, None, None).await
    }

    /// `GET /v1/certs/{serial}`.
    pub async fn get_cert(&self, serial: &str) -> Result<Answer<wire::CertInfo>, ClientError> {
        let path = format!("/v1/certs/{}", urlencode(serial));
        self.call(reqwest::Method::GET, &path, None, None).await
    }

    /// `GET /v1/ca/bundle?format=json`.
    pub async fn ca_bundle(&self) -> Result<Answer<wire::CaBundle>, ClientError> {
        self.call(
            reqwest::Method::GET,
            "/v1/ca/bundle?format=json",
            None,
            None,
        )
        .await
    }

    /// `GET /v1/ca/bundle`: the PEM bundle (roots, intermediates, CRLs).
    pub async fn ca_bundle_pem(&self) -> Result<PemAnswer, ClientError> {
        self.get_pem("/v1/ca/bundle").await
    }

    /// `GET /v1/ca/crl[?issuer=ID]`.
    pub async fn ca_crl_pem(&self, issuer: Option<&str>) -> Result<PemAnswer, ClientError> {
        let path = match issuer {
            Some(i) => format!("/v1/ca/crl?issuer={}", urlencode(i)),
            None => "/v1/ca/crl".to_owned(),
        };
        self.get_pem(&path).await
    }

    async fn get_pem(&self, path: &str) -> Result<PemAnswer, ClientError> {
        let url = format!("{}{}", self.base, path);
        let response = match self.http.get(&url).send().await {
            Ok(r) => r,
            Err(e) => return Err(self.unreachable(&e).await),
        };
        let status = response.status().as_u16();
        let version = response
            .headers()
            .get("x-keyroll-bundle-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return Err(self.unreachable(&e).await),
        };
        if !(200..300).contains(&status) {
            return Err(
                match serde_json::from_slice::<keyroll_proto::Problem>(&bytes) {
                    Ok(problem) => ClientError::Api {
                        status,
                        problem: Box::new(problem),
                    },
                    Err(_) => ClientError::Decode {
                        status,
                        reason: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                    },
                },
            );
        }
        let pem = String::from_utf8(bytes.to_vec()).map_err(|_| ClientError::Decode {
            status,
            reason: "the PEM answer is not UTF-8".to_owned(),
        })?;
        let bundle_version = version.ok_or_else(|| ClientError::Decode {
            status,
            reason: "no X-Keyroll-Bundle-Version header".to_owned(),
        })?;
        Ok(PemAnswer {
            pem,
            bundle_version,
        })
    }
}
