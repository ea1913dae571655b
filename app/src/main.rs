//! `duo-workflow-service`: the Duo Workflow Service's Cloud Connector auth core.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use duo_workflow_domain::keys::Algorithm;
use duo_workflow_service::cli::{
    self, ClientError, ClientFlow, ClientHeaders, ClientRun, FlowOptions, MintRequest,
};
use duo_workflow_service::config::{Settings, ENV_CLIENT_TOKEN};
use duo_workflow_service::{init_logging, logging, server};

#[derive(Parser)]
#[command(
    name = "duo-workflow-service",
    version,
    about = "Cloud Connector authentication for the Duo Workflow Service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC (DuoWorkflow and grpc.health.v1) on PORT (default 50052).
    Serve {
        /// A TOML configuration file; environment variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The address to listen on (default `::`, IPv4 and IPv6; `0.0.0.0` on a machine
        /// without IPv6).
        #[arg(long)]
        listen: Option<IpAddr>,
    },
    /// GenerateToken with an instance token, then ExecuteWorkflow with the user token.
    Client(ClientArgs),
    /// Authority keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Instance-style tokens for trying the service locally.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Args)]
struct ClientArgs {
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    url: String,
    /// The instance token (default: DUO_WORKFLOW_CLIENT_TOKEN).
    #[arg(long, env = ENV_CLIENT_TOKEN, hide_env_values = true)]
    token: String,
    #[arg(long)]
    realm: Option<String>,
    #[arg(long)]
    instance_id: Option<String>,
    #[arg(long)]
    global_user_id: Option<String>,
    #[arg(long)]
    duo_seat_count: Option<String>,
    #[arg(long, default_value = "say hello")]
    goal: String,
    /// The workflowID of the start request (default: empty).
    #[arg(long, value_name = "ID")]
    workflow_id: Option<String>,
    /// The flow to run, e.g. chat, software_development, developer/v1 (default: none, the
    /// service's default flow, software_development).
    #[arg(long, value_name = "NAME")]
    workflow_definition: Option<String>,
    /// A flow by its config id; requires --flow-version. GenerateToken then asks for the flow
    /// ID/SCHEMA_VERSION.
    #[arg(long, value_name = "ID")]
    flow_config_id: Option<String>,
    /// The version of the --flow-config-id flow.
    #[arg(long, value_name = "VERSION")]
    flow_version: Option<String>,
    /// The schema version of the --flow-config-id flow (default: v1).
    #[arg(long, value_name = "V")]
    flow_config_schema_version: Option<String>,
}

impl ClientArgs {
    /// What to run; contradictory flow options stop the command here, before any call.
    fn into_run(self) -> ClientRun {
        let flow = ClientFlow::from_options(FlowOptions {
            workflow_definition: self.workflow_definition,
            flow_config_id: self.flow_config_id,
            flow_config_schema_version: self.flow_config_schema_version,
            flow_version: self.flow_version,
        });
        let flow = flow.unwrap_or_else(|message| {
            let mut cli = Cli::command();
            cli.build();
            let client = cli
                .find_subcommand_mut("client")
                .expect("the client command");
            client.error(ErrorKind::ArgumentConflict, message).exit()
        });
        ClientRun {
            url: self.url,
            token: self.token,
            headers: ClientHeaders {
                realm: self.realm,
                instance_id: self.instance_id,
                global_user_id: self.global_user_id,
                duo_seat_count: self.duo_seat_count,
            },
            flow,
            goal: self.goal,
            workflow_id: self.workflow_id,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    Eddsa,
}

impl From<Alg> for Algorithm {
    fn from(a: Alg) -> Self {
        match a {
            Alg::Rs256 => Algorithm::RS256,
            Alg::Rs384 => Algorithm::RS384,
            Alg::Rs512 => Algorithm::RS512,
            Alg::Ps256 => Algorithm::PS256,
            Alg::Ps384 => Algorithm::PS384,
            Alg::Ps512 => Algorithm::PS512,
            Alg::Es256 => Algorithm::ES256,
            Alg::Es384 => Algorithm::ES384,
            Alg::Eddsa => Algorithm::EdDSA,
        }
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write a new private key (PKCS#8 PEM, mode 0600) for the signing or validation slot, or for
    /// signing instance tokens with `token mint` (rs* and ps*: an RSA 2048 key; es256: P-256;
    /// es384: P-384; eddsa: Ed25519).
    Generate {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "rs256")]
        alg: Alg,
    },
    /// Print the public half of a private key, as PEM or as a JWKS (for a static key source).
    Public {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        jwks: bool,
        /// The JWK's `alg` (default: the key's own; RS256 for an RSA key).
        #[arg(long, value_enum)]
        alg: Option<Alg>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token like the ones GitLab instances send, signed with a private key.
    Mint {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        issuer: String,
        #[arg(long, default_value = duo_workflow_domain::ServiceName::DEFAULT)]
        audience: Vec<String>,
        #[arg(long)]
        subject: Option<String>,
        /// Comma-separated unit primitives.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "duo_workflow_execute_workflow"
        )]
        scopes: Vec<String>,
        #[arg(long)]
        realm: Option<String>,
        #[arg(long)]
        instance_id: Option<String>,
        #[arg(long)]
        duo_seat_count: Option<String>,
        #[arg(long, default_value_t = 3600)]
        lifetime: u64,
        /// Leave out the `kid` header, as GitLab Rails did.
        #[arg(long)]
        no_kid: bool,
        /// The algorithm to sign with (default: the key's own; RS256 for an RSA key).
        #[arg(long, value_enum)]
        alg: Option<Alg>,
    },
    /// What the service would do with a token: which key source judges it, each check with its
    /// outcome, the header binding, the unit primitives, and what GenerateToken and
    /// ExecuteWorkflow answer. Loads the configuration as `serve` does (file and environment;
    /// remote key sources are fetched once). Prints neither the token nor any key.
    Explain {
        /// A TOML configuration file; environment variables override it, as for `serve`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The flow GenerateToken and ExecuteWorkflow are asked about.
        #[arg(long, value_name = "NAME", default_value = duo_workflow_service::explain::DEFAULT_FLOW)]
        flow: String,
        /// The token, or `-` (the default) to read it from standard input, which keeps it out
        /// of the process list and the shell's history.
        #[arg(value_name = "TOKEN", default_value = "-")]
        token: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let command = Cli::parse().command;
    // `serve` sets up its logging from its configuration.
    match command {
        Command::Serve { .. } => {}
        // What went wrong while building the service; not the server's notes on its keys.
        Command::Token(TokenCommand::Explain { .. }) => {
            logging::init_cli_at("warn,duo_workflow_service::server=error")
        }
        _ => init_logging(),
    }
    let result = match command {
        Command::Serve { config, listen } => serve(config, listen).await,
        Command::Client(a) => match cli::run_client(&a.into_run()).await {
            Ok(()) => Ok(()),
            Err(ClientError::Setup(e)) => Err(e),
            // Its final status line is printed already.
            Err(ClientError::Failed) => return ExitCode::FAILURE,
        },
        Command::Keys(KeysCommand::Generate { out, alg }) => cli::generate_key(alg.into(), &out)
            .map(|kid| {
                println!("wrote {} (kid {kid})", out.display());
            }),
        Command::Keys(KeysCommand::Public { key, jwks, alg }) => cli::load_private_key(&key)
            .and_then(|k| match alg {
                Some(alg) => k.with_algorithm(alg.into()),
                None => Ok(k),
            })
            .map(|k| println!("{}", cli::public_key(&k, jwks).trim_end())),
        Command::Token(TokenCommand::Mint {
            key,
            issuer,
            audience,
            subject,
            scopes,
            realm,
            instance_id,
            duo_seat_count,
            lifetime,
            no_kid,
            alg,
        }) => cli::load_private_key(&key)
            .and_then(|k| match alg {
                Some(alg) => k.with_algorithm(alg.into()),
                None => Ok(k),
            })
            .map(|k| {
                let request = MintRequest {
                    issuer,
                    audience,
                    subject,
                    scopes: scopes.into_iter().filter(|s| !s.is_empty()).collect(),
                    realm,
                    instance_id,
                    duo_seat_count,
                    lifetime_seconds: lifetime,
                    with_kid: !no_kid,
                };
                println!("{}", cli::mint(&k, &request));
            }),
        Command::Token(TokenCommand::Explain {
            config,
            flow,
            token,
        }) => explain(config, &flow, token).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Option<PathBuf>, listen: Option<IpAddr>) -> Result<(), String> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let settings = Settings::load(config.as_deref(), &env).map_err(|e| e.to_string())?;
    // Held until `serve` returns: dropping it writes out the buffered lines.
    let _log = logging::init_service(&settings.logging);
    let service = server::build(&settings).map_err(|e| e.to_string())?;
    let bind = |ip: IpAddr| {
        server::Listeners::bind(
            SocketAddr::new(ip, settings.port),
            SocketAddr::new(ip, settings.http_port),
            settings.metrics_addr,
        )
    };
    let listeners = match listen {
        Some(ip) => bind(ip).await,
        // `[::]` takes IPv4 and IPv6, like GitLab's server; a machine without IPv6 gets IPv4.
        None => match bind(IpAddr::V6(Ipv6Addr::UNSPECIFIED)).await {
            Err(server::StartError::Bind { source, .. }) if no_ipv6(&source) => {
                tracing::warn!("no IPv6 on this machine ({source}): listening on 0.0.0.0");
                bind(IpAddr::V4(Ipv4Addr::UNSPECIFIED)).await
            }
            other => other,
        },
    }
    .map_err(|e| e.to_string())?;
    let local =
        |l: &tokio::net::TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    if !settings.metrics_addr.ip().is_loopback() {
        tracing::warn!(
            operator = %settings.metrics_addr,
            "the operator listener (/metrics, /key-sources) is not on loopback: anyone who can reach it reads them"
        );
    }
    tracing::info!(
        grpc = %local(&listeners.grpc),
        published_keys = %local(&listeners.http),
        operator = %local(&listeners.operator),
        tls = settings.tls.is_some(),
        mutual_tls = settings.tls.as_ref().is_some_and(|t| t.mutual()),
        published_keys_tls = settings.http_tls,
        "serving"
    );
    server::serve(service, listeners, shutdown_signal())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!("stopped");
    Ok(())
}

async fn explain(config: Option<PathBuf>, flow: &str, token: String) -> Result<(), String> {
    let token = if token == "-" {
        read_token_from_stdin()?
    } else {
        token
    };
    let env: HashMap<String, String> = std::env::vars().collect();
    let settings = Settings::load(config.as_deref(), &env).map_err(|e| e.to_string())?;
    let report = duo_workflow_service::explain::explain(&settings, &token, flow)
        .await
        .map_err(|e| e.to_string())?;
    print!("{report}");
    Ok(())
}

/// The token on standard input: one line, surrounding blanks ignored, at most 64 KiB read (the
/// longest token any configuration accepts).
fn read_token_from_stdin() -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    std::io::stdin()
        .take(64 * 1024 + 2)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the token from standard input: {e}"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err("no token on standard input (give it there, or as an argument)".into());
    }
    Ok(token.to_owned())
}

/// An error binding `[::]` that means the machine has no IPv6.
fn no_ipv6(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_codes::EAFNOSUPPORT | libc_codes::EADDRNOTAVAIL)
    )
}

/// The two errno values of [`no_ipv6`] (Linux and the BSDs share neither, so by platform).
mod libc_codes {
    #[cfg(target_os = "linux")]
    pub const EAFNOSUPPORT: i32 = 97;
    #[cfg(target_os = "linux")]
    pub const EADDRNOTAVAIL: i32 = 99;
    #[cfg(not(target_os = "linux"))]
    pub const EAFNOSUPPORT: i32 = 47;
    #[cfg(not(target_os = "linux"))]
    pub const EADDRNOTAVAIL: i32 = 49;
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
