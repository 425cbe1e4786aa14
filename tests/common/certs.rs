//! Throwaway certificate authorities and leaf certificates for the TLS tests, and the TLS side of
//! the Redis fixtures' processes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca") }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// (certificate PEM, key PEM) for the given names (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("params");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

/// The TLS side of a Redis fixture: one server certificate for 127.0.0.1 that every
/// process presents (also on the links it opens to the others), the CA that verifies them, a client
/// pair for the test's clients, and each process's TLS port next to its plaintext one.
#[derive(Debug)]
pub struct NodeTls {
    pub ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Plaintext port -> TLS port, for every process.
    ports: HashMap<u16, u16>,
}

impl NodeTls {
    /// Writes the PEM files into `dir`.
    pub fn new(ca: &Ca, dir: &Path) -> NodeTls {
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write a PEM file");
            path
        };
        let (cert, key) = ca.leaf(&["127.0.0.1"]);
        let (client_cert, client_key) = ca.leaf(&["sluice"]);
        NodeTls {
            ca: write("ca.crt", &ca.pem()),
            cert: write("server.crt", &cert),
            key: write("server.key", &key),
            client_cert: write("client.crt", &client_cert),
            client_key: write("client.key", &client_key),
            ports: HashMap::new(),
        }
    }

    /// The `redis-server` arguments that give the process on plaintext `port` a TLS port (picked
    /// with `pick`), as `server_args` says.
    pub fn args(&mut self, port: u16, pick: impl FnOnce() -> u16) -> Vec<OsString> {
        let tls_port = *self.ports.entry(port).or_insert_with(pick);
        self.server_args(tls_port)
    }

    /// The `redis-server` arguments for TLS on `tls_port`: clients verified against the CA, and
    /// TLS on the replication links the process opens.
    pub fn server_args(&self, tls_port: u16) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut pair = |k: &str, v: OsString| {
            args.push(k.into());
            args.push(v);
        };
        pair("--tls-port", tls_port.to_string().into());
        pair("--tls-cert-file", self.cert.clone().into());
        pair("--tls-key-file", self.key.clone().into());
        pair("--tls-ca-cert-file", self.ca.clone().into());
        pair("--tls-auth-clients", "yes".into());
        pair("--tls-replication", "yes".into());
        args
    }

    /// The TLS port of the process on plaintext `port`.
    pub fn port_for(&self, port: u16) -> u16 {
        self.ports[&port]
    }

    /// `redis-cli` arguments for a TLS connection with the client pair.
    pub fn cli_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--tls".into(), "--cacert".into(), self.ca.clone().into()];
        args.extend(["--cert".into(), self.client_cert.clone().into()]);
        args.extend(["--key".into(), self.client_key.clone().into()]);
        args
    }

    /// The CA and the client pair for a `redis` crate client.
    pub fn client_certificates(&self) -> redis::TlsCertificates {
        let read = |path: &PathBuf| std::fs::read(path).expect("read a PEM file");
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: read(&self.client_cert),
                client_key: read(&self.client_key),
            }),
            root_cert: Some(read(&self.ca)),
        }
    }

    /// A `redis.tls` config section naming the CA and the client pair.
    pub fn config(&self) -> String {
        format!(
            "  tls:\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n",
            self.ca.display(),
            self.client_cert.display(),
            self.client_key.display()
        )
    }
}

/// The port clients reach the process on plaintext `port` by: itself, or with TLS its TLS port.
pub fn client_port(tls: Option<&NodeTls>, port: u16) -> u16 {
    tls.map_or(port, |t| t.port_for(port))
}

/// `redis://127.0.0.1:PORT` for the process on plaintext `port`; with TLS, `rediss://` and its
/// TLS port.
pub fn client_url(tls: Option<&NodeTls>, port: u16) -> String {
    let scheme = if tls.is_some() { "rediss" } else { "redis" };
    format!("{scheme}://127.0.0.1:{}", client_port(tls, port))
}

/// A directory laid out as the kubelet mounts a Secret: the files live in a generation directory
/// (`..<n>/`), `..data` links to it, and each visible name links through `..data`. `rotate` writes
/// a new generation and swaps `..data` over to it in one rename, as the kubelet does, so a reader
/// sees all the old files or all the new ones.
pub struct SecretDir {
    dir: tempfile::TempDir,
    generation: u32,
}

impl SecretDir {
    /// The first generation of `files` (name, content).
    pub fn new(files: &[(&str, &str)]) -> SecretDir {
        let mut secret = SecretDir { dir: tempfile::tempdir().expect("temp dir"), generation: 0 };
        secret.rotate(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(Path::new("..data").join(name), secret.dir.path().join(name))
                .expect("link a visible name");
        }
        secret
    }

    /// The visible path of `name`, as a configuration names it.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Swaps in a new generation holding `files` (the same names as the first), then removes the
    /// previous generation.
    pub fn rotate(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let root = self.dir.path();
        let generation = format!("..{}", self.generation);
        std::fs::create_dir(root.join(&generation)).expect("a generation directory");
        for (name, content) in files {
            std::fs::write(root.join(&generation).join(name), content).expect("write a secret file");
        }
        let _ = std::fs::remove_file(root.join("..data_tmp"));
        std::os::unix::fs::symlink(&generation, root.join("..data_tmp")).expect("link ..data_tmp");
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap ..data");
        if self.generation > 1 {
            std::fs::remove_dir_all(root.join(format!("..{}", self.generation - 1)))
                .expect("remove the previous generation");
        }
    }
}

/// The DER of the first certificate in a PEM text (the leaf).
pub fn leaf_der(pem: &str) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate").to_vec()
}
