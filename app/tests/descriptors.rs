//! The real `roomcast` binary under a small open-file limit: it says so at start, connections
//! that send nothing cannot take it over, and health checks are answered throughout.

use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

const SECRET: &str = "process-test-secret-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(20);
/// Soft and hard limit of open files for the server.
const DESCRIPTORS: u64 = 512;

/// `GET path` on a fresh connection: the status code.
async fn status_of(addr: &str, path: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.expect("read");
    let text = String::from_utf8_lossy(&reply);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"))
}

#[tokio::test]
async fn a_flood_of_silent_connections_leaves_health_checks_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The shell's `ulimit -n` sets the soft and the hard limit.
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("ulimit -n {DESCRIPTORS} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_roomcast"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        // Long enough that the flood is still open when the health checks come.
        .args(["--header-read-timeout", "60s"])
        .args(["--handshake-rate", "100000", "--handshake-burst", "100000"])
        .env("ROOMCAST_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("spawn roomcast");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = stdout.next_line().await.expect("stdout") {
            if let Some(addr) = line.strip_prefix("listening on http://") {
                return addr.to_owned();
            }
        }
        panic!("roomcast exited before listening");
    })
    .await
    .expect("roomcast listens");
    // The warning comes before the accept loop starts.
    let warning = tokio::time::timeout(WAIT, async {
        while let Some(line) = stderr.next_line().await.expect("stderr") {
            if line.contains("may open fewer files than max_connections needs") {
                return line;
            }
        }
        panic!("roomcast exited without the warning");
    })
    .await
    .expect("a warning about the descriptor limit");
    assert!(warning.contains("descriptor_limit=512"), "{warning}");
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });

    // More silent connections than the process may open files.
    let mut flood = Vec::new();
    for _ in 0..DESCRIPTORS + 100 {
        flood.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    // The health checks are answered all the same (from the reserve, whose connections get
    // a short header timeout), and the process is still there.
    for _ in 0..3 {
        let status = tokio::time::timeout(WAIT, status_of(&addr, "/healthz"))
            .await
            .expect("/healthz answered during the flood");
        assert_eq!(status, 200);
    }
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "still running"
    );
    drop(flood);
    let status = tokio::time::timeout(WAIT, status_of(&addr, "/readyz"))
        .await
        .expect("/readyz answered after the flood");
    assert_eq!(status, 200);
}
