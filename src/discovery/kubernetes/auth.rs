//! Finding the API server and our credentials: an explicit `api_server` URL (tests, or a local
//! `kubectl proxy`), a kubeconfig file, or the pod's own service account (in-cluster).
//!
//! Kubeconfig support is kept to what a daemon can use without shelling out: `server`,
//! `certificate-authority` / `-data`, `tls-server-name`, and a user with `token`, `tokenFile`
//! or a client certificate (`client-certificate` / `-data` + `client-key` / `-data`). `exec`
//! and `auth-provider` plugins, basic auth, `proxy-url` and `insecure-skip-tls-verify` are
//! refused with an error that names them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde::Deserialize;

use super::api::{ApiServer, Auth};
use crate::tls;
use crate::upstream::tls::TlsClient;

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The API server to use and the namespace our credentials point at, if they say.
pub struct Resolved {
    pub server: ApiServer,
    pub namespace: Option<String>,
}

/// `api_server` wins, then `kubeconfig`, then the in-cluster service account.
pub fn resolve(api_server: Option<&str>, kubeconfig: Option<&Path>) -> Result<Resolved, String> {
    match (api_server, kubeconfig) {
        (Some(url), _) => Ok(Resolved {
            server: server(url, None, Auth::None, None)?,
            namespace: None,
        }),
        (None, Some(path)) => from_kubeconfig(path),
        (None, None) => in_cluster(
            Path::new(SA_DIR),
            std::env::var("KUBERNETES_SERVICE_HOST").ok(),
            std::env::var("KUBERNETES_SERVICE_PORT").ok(),
        ),
    }
}

/// The pod's service account: `KUBERNETES_SERVICE_HOST` / `_PORT` and the mounted token, CA
/// and namespace in `dir`.
pub fn in_cluster(
    dir: &Path,
    host: Option<String>,
    port: Option<String>,
) -> Result<Resolved, String> {
    let host = host.filter(|h| !h.is_empty()).ok_or_else(|| {
        "not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST is not set) and no \
         kubeconfig or api_server is configured"
            .to_string()
    })?;
    let port = port.unwrap_or_else(|| "443".to_string());
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let ca = read(&dir.join("ca.crt"))?;
    let tls = tls_client(&ca, &dir.join("ca.crt").display().to_string(), None, None)?;
    let token = dir.join("token");
    read(&token)?;
    let namespace = std::fs::read_to_string(dir.join("namespace"))
        .ok()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty());
    Ok(Resolved {
        server: server(
            &format!("https://{host}:{port}"),
            Some(tls),
            Auth::TokenFile(token),
            None,
        )?,
        namespace,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// An `ApiServer` for `url` (`http://` or `https://`, with an optional path prefix).
fn server(
    url: &str,
    tls: Option<TlsClient>,
    auth: Auth,
    sni: Option<&str>,
) -> Result<ApiServer, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("API server URL {url:?}: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("API server URL {url:?}: use http:// or https://")),
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("API server URL {url:?} has no host"))?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addr = format!("{host}:{port}");
    let tls = match (https, tls) {
        (false, _) => None,
        (true, Some(t)) => Some(t),
        (true, None) => Some(tls_client(&[], "", None, None)?),
    };
    let tls = match (tls, sni) {
        (Some(mut t), Some(name)) => {
            t.sni = Some(
                ServerName::try_from(name.to_string())
                    .map_err(|_| format!("tls-server-name {name:?} is not a DNS name"))?,
            );
            Some(Arc::new(t))
        }
        (t, _) => t.map(Arc::new),
    };
    if !https && !matches!(auth, Auth::None) {
        return Err(format!(
            "API server URL {url:?} is plain http: a token or client certificate is only sent \
             over https"
        ));
    }
    Ok(ApiServer {
        url: url.trim_end_matches('/').to_string(),
        authority: uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| addr.clone()),
        addr,
        prefix: uri.path().trim_end_matches('/').to_string(),
        tls,
        auth,
    })
}

/// A TLS client trusting the PEM `ca` (the system roots when it is empty), with an optional
/// client certificate.
fn tls_client(
    ca: &[u8],
    ca_name: &str,
    client_chain: Option<&[u8]>,
    client_key: Option<&[u8]>,
) -> Result<TlsClient, String> {
    let roots = if ca.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(found.certs);
        roots
    } else {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca) {
            let cert = cert.map_err(|e| format!("{ca_name}: bad PEM certificate: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("{ca_name}: unusable CA certificate: {e}"))?;
        }
        if roots.is_empty() {
            return Err(format!("{ca_name}: no PEM certificate in it"));
        }
        roots
    };
    let builder = ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match (client_chain, client_key) {
        (Some(chain), Some(key)) => {
            let chain: Vec<_> = CertificateDer::pem_slice_iter(chain)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("client-certificate: bad PEM: {e}"))?;
            if chain.is_empty() {
                return Err("client-certificate: no PEM certificate in it".to_string());
            }
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| format!("client-key: no usable PEM private key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client-certificate / client-key: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("client-certificate and client-key must be given together".to_string()),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsClient {
        config: Arc::new(config),
        sni: None,
    })
}

#[derive(Deserialize)]
struct KubeConfig {
    #[serde(rename = "current-context")]
    current_context: Option<String>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "context", alias = "cluster", alias = "user")]
    value: T,
}

#[derive(Deserialize)]
struct Context {
    cluster: String,
    #[serde(default)]
    user: String,
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
    tls_server_name: Option<String>,
    insecure_skip_tls_verify: Option<bool>,
    proxy_url: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
    exec: Option<serde_yaml_ng::Value>,
    auth_provider: Option<serde_yaml_ng::Value>,
    username: Option<String>,
}

/// The current context of a kubeconfig file.
pub fn from_kubeconfig(path: &Path) -> Result<Resolved, String> {
    let file = path.display().to_string();
    let text = read(path)?;
    let kc: KubeConfig =
        serde_yaml_ng::from_slice(&text).map_err(|e| format!("{file}: not a kubeconfig: {e}"))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let current = kc
        .current_context
        .filter(|c| !c.is_empty())
        .ok_or_else(|| format!("{file}: no current-context"))?;
    let find = |what: &str, name: &str| format!("{file}: no {what} named {name:?}");
    let ctx = &kc
        .contexts
        .iter()
        .find(|c| c.name == current)
        .ok_or_else(|| find("context", &current))?
        .value;
    let cluster = &kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .ok_or_else(|| find("cluster", &ctx.cluster))?
        .value;
    let no_user = User::default();
    let user = match ctx.user.as_str() {
        "" => &no_user,
        name => {
            &kc.users
                .iter()
                .find(|u| u.name == name)
                .ok_or_else(|| find("user", name))?
                .value
        }
    };
    let unsupported = |what: &str| {
        format!(
            "{file}: {what} is not supported by gatewise; use a token, tokenFile or a client \
             certificate (for example a service account token)"
        )
    };
    if user.exec.is_some() {
        return Err(unsupported("user exec (credential plugin)"));
    }
    if user.auth_provider.is_some() {
        return Err(unsupported("user auth-provider"));
    }
    if user.username.is_some() {
        return Err(unsupported("basic auth (username/password)"));
    }
    if cluster.insecure_skip_tls_verify == Some(true) {
        return Err(format!(
            "{file}: insecure-skip-tls-verify is not supported; set certificate-authority"
        ));
    }
    if cluster.proxy_url.is_some() {
        return Err(format!("{file}: proxy-url is not supported"));
    }
    let resolve = |p: &PathBuf| {
        if p.is_absolute() {
            p.clone()
        } else {
            dir.join(p)
        }
    };
    let data = |field: &str, file_field: &Option<PathBuf>, inline: &Option<String>| match (
        inline, file_field,
    ) {
        (Some(b64), _) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map(Some)
            .map_err(|e| format!("{file}: {field}-data is not base64: {e}")),
        (None, Some(p)) => read(&resolve(p)).map(Some),
        (None, None) => Ok(None),
    };
    let ca = data(
        "certificate-authority",
        &cluster.certificate_authority,
        &cluster.certificate_authority_data,
    )?;
    let chain = data(
        "client-certificate",
        &user.client_certificate,
        &user.client_certificate_data,
    )?;
    let key = data("client-key", &user.client_key, &user.client_key_data)?;
    let auth = match (&user.token, &user.token_file) {
        (Some(t), _) => Auth::Token(t.clone()),
        (None, Some(p)) => Auth::TokenFile(resolve(p)),
        (None, None) => Auth::None,
    };
    let https = cluster.server.starts_with("https://");
    let tls = if https {
        Some(tls_client(
            ca.as_deref().unwrap_or_default(),
            &format!("{file}: certificate-authority"),
            chain.as_deref(),
            key.as_deref(),
        )?)
    } else {
        None
    };
    let server = server(
        &cluster.server,
        tls,
        auth,
        cluster.tls_server_name.as_deref(),
    )
    .map_err(|e| format!("{file}: {e}"))?;
    Ok(Resolved {
        server,
        namespace: ctx.namespace.clone().filter(|n| !n.is_empty()),
    })
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
