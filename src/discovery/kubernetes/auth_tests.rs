use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;

use super::*;

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gatewise-kube-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ca_pem() -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

fn kubeconfig(cluster: &str, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: dev\npreferences: {{}}\n\
         contexts:\n- name: dev\n  context:\n    cluster: c1\n    user: u1\n    namespace: shop\n\
         clusters:\n- name: c1\n  cluster:\n{cluster}\n\
         users:\n- name: u1\n  user:\n{user}\n"
    )
}

#[test]
fn kubeconfig_with_a_ca_file_relative_to_it_and_a_token() {
    let dir = Dir::new();
    dir.write("ca.crt", &ca_pem());
    let path = dir.write(
        "config",
        &kubeconfig(
            "    server: https://127.0.0.1:6443\n    certificate-authority: ca.crt",
            "    token: abc123",
        ),
    );
    let r = from_kubeconfig(&path).unwrap();
    assert_eq!(r.namespace.as_deref(), Some("shop"));
    assert_eq!(r.server.addr, "127.0.0.1:6443");
    assert!(r.server.tls.is_some());
    assert!(matches!(r.server.auth, Auth::Token(ref t) if t == "abc123"));
}

#[test]
fn kubeconfig_with_inline_ca_data_and_a_token_file() {
    let dir = Dir::new();
    let data = base64::engine::general_purpose::STANDARD.encode(ca_pem());
    let path = dir.write(
        "config",
        &kubeconfig(
            &format!("    server: https://kube.example:443/prefix/\n    certificate-authority-data: {data}"),
            "    tokenFile: token",
        ),
    );
    let r = from_kubeconfig(&path).unwrap();
    assert_eq!(r.server.addr, "kube.example:443");
    assert_eq!(r.server.prefix, "/prefix");
    assert!(matches!(r.server.auth, Auth::TokenFile(ref p) if *p == dir.0.join("token")));
}

#[test]
fn kubeconfig_features_gatewise_lacks_are_refused_by_name() {
    let dir = Dir::new();
    let cases = [
        (
            "    server: https://127.0.0.1:6443",
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: aws",
            "exec",
        ),
        (
            "    server: https://127.0.0.1:6443",
            "    auth-provider:\n      name: gcp",
            "auth-provider",
        ),
        (
            "    server: https://127.0.0.1:6443\n    insecure-skip-tls-verify: true",
            "    token: t",
            "insecure-skip-tls-verify",
        ),
        (
            "    server: http://127.0.0.1:8080",
            "    token: t",
            "plain http",
        ),
        (
            "    server: https://127.0.0.1:6443\n    certificate-authority-data: '%%%'",
            "    token: t",
            "not base64",
        ),
    ];
    for (cluster, user, words) in cases {
        let path = dir.write("config", &kubeconfig(cluster, user));
        let err = from_kubeconfig(&path).err().expect("refused");
        assert!(err.contains(words), "{words}: {err}");
        assert!(err.contains("config"), "names the file: {err}");
    }
    let path = dir.write("config", "current-context: nope\ncontexts: []\n");
    let err = from_kubeconfig(&path).err().unwrap();
    assert!(err.contains("no context named \"nope\""), "{err}");
}

#[test]
fn in_cluster_reads_the_service_account_and_needs_the_env() {
    let dir = Dir::new();
    dir.write("ca.crt", &ca_pem());
    dir.write("token", "tok\n");
    dir.write("namespace", "shop\n");
    let r = in_cluster(&dir.0, Some("10.96.0.1".into()), Some("443".into())).unwrap();
    assert_eq!(r.server.addr, "10.96.0.1:443");
    assert_eq!(r.namespace.as_deref(), Some("shop"));
    assert!(r.server.tls.is_some());
    assert!(matches!(r.server.auth, Auth::TokenFile(_)));
    assert_eq!(r.server.token().unwrap().as_deref(), Some("tok"));
    let v6 = in_cluster(&dir.0, Some("fd00::1".into()), None).unwrap();
    assert_eq!(v6.server.addr, "[fd00::1]:443");

    let err = in_cluster(&dir.0, None, None).err().unwrap();
    assert!(err.contains("KUBERNETES_SERVICE_HOST"), "{err}");
    std::fs::remove_file(dir.0.join("ca.crt")).unwrap();
    let err = in_cluster(&dir.0, Some("10.96.0.1".into()), None)
        .err()
        .unwrap();
    assert!(err.contains("ca.crt"), "{err}");
}

#[test]
fn api_server_override_is_plain_and_unauthenticated() {
    let r = resolve(Some("http://127.0.0.1:8001"), None).unwrap();
    assert_eq!(r.server.addr, "127.0.0.1:8001");
    assert!(r.server.tls.is_none());
    assert!(resolve(Some("ftp://x"), None).is_err());
}
