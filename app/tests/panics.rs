//! A panic in one of the service's tasks is an ERROR line carrying that task's span (the request
//! id of the call it served) and one more in `duo_workflow_panics_total` on `/metrics`; the
//! service goes on serving. Its own test binary: the panic hook and the log subscriber are
//! process-wide.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use duo_workflow_service::config::{LogLevel, LogSettings, Settings};
use duo_workflow_service::{logging, panics, server};
use tracing::Instrument;

/// Log lines, kept in memory.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = Lines;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

async fn scrape(operator: std::net::SocketAddr, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(operator).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_panics_is_an_error_line_with_its_request_id_and_a_metric() {
    let lines = Lines::default();
    let settings = LogSettings {
        level: LogLevel::Info,
        json: true,
    };
    tracing::subscriber::set_global_default(logging::subscriber(&settings, lines.clone(), false))
        .unwrap();
    let vars: HashMap<String, String> = [
        ("DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL", ""),
        ("DUO_WORKFLOW_AUTH__OIDC_CUSTOMER_PORTAL_URL", ""),
        ("PROMETHEUS_METRICS__PORT", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let settings = Settings::load(None, &vars).unwrap();
    let addr = "127.0.0.1:0".parse().unwrap();
    let service = server::start(&settings, addr, addr).await.unwrap();
    assert_eq!(
        scrape(service.operator_addr, "duo_workflow_panics_total").await,
        Some(0.0)
    );

    // A task serving a call, in its request span as the request-id layer makes it.
    let span = tracing::info_span!("request", request_id = "req-panics-1");
    let task = tokio::spawn(
        async {
            let sizes: Vec<usize> = Vec::new();
            sizes[3]
        }
        .instrument(span),
    );
    assert!(task.await.unwrap_err().is_panic());

    assert_eq!(panics::count(), 1);
    assert_eq!(panics::count_in_tasks(), 1);
    assert_eq!(
        scrape(service.operator_addr, "duo_workflow_panics_total").await,
        Some(1.0)
    );
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let line: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|l: &serde_json::Value| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("panicked at "))
        })
        .unwrap_or_else(|| panic!("no panic line in:\n{text}"));
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["span"]["request_id"], "req-panics-1", "{line}");
    let message = line["message"].as_str().unwrap();
    assert!(
        message.contains("app/tests/panics.rs:") && message.contains("index out of bounds"),
        "{message}"
    );
    assert_ne!(line["task"], "none", "{line}");

    // The service itself goes on.
    let (status, _, _) = get(service.http_addr).await;
    assert_eq!(status, 200);
    service.stop().await.unwrap();
}

async fn get(addr: std::net::SocketAddr) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET /oauth/discovery/keys HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}
