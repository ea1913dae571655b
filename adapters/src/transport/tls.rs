//! TLS for the listeners, with rustls (ring): a PEM certificate chain and key, optionally a CA
//! bundle that client certificates must chain to (mutual TLS between Workhorse and the
//! service). The files can be read again while serving (it is [`Reloadable`]): new connections
//! get the new configuration, open ones keep the session they have.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use super::listener::Protocol;
use crate::reload::{FileContents, Reloadable, Reloaded, Trigger, WatchedFiles};

/// Where the certificate, its key and the client CA bundle are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, every gRPC client must present a certificate that chains to these.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The certificate, the key, and the client CA bundle when there is one, in that order.
    fn paths(&self) -> Vec<PathBuf> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

/// Which of the [`TlsFiles`] a problem is with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
    ClientCa,
}

#[derive(Debug, thiserror::Error)]
#[error("{problem}")]
pub struct TlsError {
    pub file: TlsFile,
    pub problem: String,
}

fn error(file: TlsFile, problem: impl Into<String>) -> TlsError {
    TlsError {
        file,
        problem: problem.into(),
    }
}

/// The server configurations of the two listeners, built from the same files.
struct Configs {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

/// TLS configuration that can be read again from its files while serving.
pub struct ReloadableTls {
    files: TlsFiles,
    configs: RwLock<Configs>,
    watched: WatchedFiles,
}

impl std::fmt::Debug for ReloadableTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ReloadableTls {
    /// Reads and checks the files.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let watched = WatchedFiles::new(files.paths());
        let contents: Vec<FileContents> = watched
            .paths()
            .iter()
            .map(|p| FileContents::read(p))
            .collect();
        let configs = build(&files, &contents)?;
        watched.seen(&contents);
        Ok(Self {
            files,
            configs: RwLock::new(configs),
            watched,
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// An acceptor with the current configuration for a listener.
    pub fn acceptor(&self, protocol: Protocol) -> TlsAcceptor {
        let configs = self.configs.read().expect("not poisoned");
        TlsAcceptor::from(match protocol {
            Protocol::Grpc => configs.grpc.clone(),
            Protocol::Http => configs.http.clone(),
        })
    }
}

/// Reading the files again: new connections get the new certificate, open ones keep theirs;
/// files that do not load leave the previous configuration in place.
impl Reloadable for ReloadableTls {
    fn name(&self) -> &str {
        "tls"
    }

    fn reload(&self, _: Trigger) -> Reloaded {
        let Some(contents) = self.watched.read_if_changed() else {
            return Reloaded::Unchanged;
        };
        match build(&self.files, &contents) {
            Ok(configs) => {
                *self.configs.write().expect("not poisoned") = configs;
                Reloaded::Changed(format!(
                    "certificate {} in use for new connections",
                    self.files.cert.display()
                ))
            }
            Err(e) => Reloaded::Failed(format!("{:?} file: {e}", e.file)),
        }
    }
}

/// The configurations from the files' contents (`contents`: one per [`TlsFiles::paths`]).
fn build(files: &TlsFiles, contents: &[FileContents]) -> Result<Configs, TlsError> {
    let read = |file: TlsFile, path: &PathBuf| {
        let i = match file {
            TlsFile::Cert => 0,
            TlsFile::Key => 1,
            TlsFile::ClientCa => 2,
        };
        contents[i]
            .bytes(path)
            .map(<[u8]>::to_vec)
            .map_err(|e| error(file, e))
    };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read(TlsFile::Cert, &files.cert)?)
            .collect::<Result<_, _>>()
            .map_err(|e| error(TlsFile::Cert, format!("not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return Err(error(
            TlsFile::Cert,
            format!("{} holds no PEM certificate", files.cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(TlsFile::Key, &files.key)?).map_err(|e| {
        error(
            TlsFile::Key,
            format!("{} holds no PEM private key: {e}", files.key.display()),
        )
    })?;
    let client_roots = match &files.client_ca {
        None => None,
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&read(TlsFile::ClientCa, path)?) {
                let cert = cert
                    .map_err(|e| error(TlsFile::ClientCa, format!("not PEM certificates: {e}")))?;
                roots.add(cert).map_err(|e| {
                    error(TlsFile::ClientCa, format!("unusable CA certificate: {e}"))
                })?;
            }
            if roots.is_empty() {
                return Err(error(
                    TlsFile::ClientCa,
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            Some(Arc::new(roots))
        }
    };

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = || {
        ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
    };
    let single_cert =
        |builder: rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>| {
            builder
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|e| {
                    error(
                        TlsFile::Key,
                        format!("does not fit the certificate or is not supported: {e}"),
                    )
                })
        };
    let mut grpc = match client_roots {
        None => single_cert(builder().with_no_client_auth())?,
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| error(TlsFile::ClientCa, e.to_string()))?;
            single_cert(builder().with_client_cert_verifier(verifier))?
        }
    };
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    let mut http = single_cert(builder().with_no_client_auth())?;
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Configs {
        grpc: Arc::new(grpc),
        http: Arc::new(http),
    })
}
