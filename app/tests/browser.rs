//! The chat page in a real browser: runs `node --test chat.test.mjs` (in `tests/browser/`)
//! against the real `roomcast dev` binary, with Debian's Chromium driven by playwright-core.
//!
//! The node test gets the server's base URL in `ROOMCAST_URL`. It stops and starts the server
//! through a small control endpoint served here, `ROOMCAST_CONTROL_URL`:
//! - `POST /stop`: SIGTERM, then wait for a clean exit;
//! - `POST /start`: start again on the same port and data directory; answers the base URL.
//!
//! Nothing is installed or built here: node (20 or newer), the npm packages
//! (`npm ci` in `tests/browser/`) and `/usr/bin/chromium` must be present, or the test fails
//! saying what is missing (`scripts/test` installs them). It never skips.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

const CHROMIUM: &str = "/usr/bin/chromium";
/// How long the server gets to start or stop.
const SERVER_WAIT: Duration = Duration::from_secs(20);
/// How long the whole node test may take (below nextest's hard limit, so that a hang is
/// reported here with the node output).
const NODE_WAIT: Duration = Duration::from_secs(110);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("browser")
}

/// Fails with a clear message when a prerequisite of the browser test is missing.
fn check_prerequisites(dir: &Path) {
    let fix = "run scripts/test, which installs it";
    let version = std::process::Command::new("node")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!("the browser test needs node 20 or newer, and `node` cannot run ({e}); {fix}")
        });
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "the browser test needs node 20 or newer, found {version:?}; {fix}"
    );

    let wanted = package_version(&dir.join("package.json"), "devDependencies");
    let installed_manifest = dir.join("node_modules/playwright-core/package.json");
    assert!(
        installed_manifest.is_file(),
        "the browser test's npm packages are missing: run `npm ci` in {} (scripts/test does)",
        dir.display()
    );
    let installed = package_version(&installed_manifest, "");
    assert_eq!(
        installed,
        wanted,
        "playwright-core {installed} is installed but package.json pins {wanted}: run `npm ci` in {}",
        dir.display()
    );

    let chromium = Path::new(CHROMIUM);
    assert!(
        chromium.is_file(),
        "the browser test needs Debian's Chromium at {CHROMIUM} (`apt-get install chromium`); {fix}"
    );
}

/// playwright-core's version: from `section` (`devDependencies`) of a package.json, or its
/// `version` when `section` is empty.
fn package_version(path: &Path, section: &str) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let value = if section.is_empty() {
        &json["version"]
    } else {
        &json[section]["playwright-core"]
    };
    value
        .as_str()
        .unwrap_or_else(|| panic!("{} has no playwright-core version", path.display()))
        .to_owned()
}

/// The `roomcast dev` process and how to start it again.
struct Server {
    child: Option<Child>,
    /// Where it listens; fixed after the first start, so that open pages can reconnect.
    addr: Option<SocketAddr>,
    data_dir: PathBuf,
}

impl Server {
    /// Starts `roomcast dev` (on a free port the first time, then on the same one) and waits for
    /// its `listening on http://ADDR` line.
    async fn start(&mut self) -> Result<String, String> {
        if self.child.is_some() {
            return Err("the server is already running".into());
        }
        let listen = self
            .addr
            .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .args(["dev", "--listen", &listen, "--data-dir"])
            .arg(&self.data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot spawn roomcast: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let found = tokio::time::timeout(SERVER_WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                println!("roomcast: {line}");
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    return addr
                        .trim()
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("bad address in {line:?}: {e}"));
                }
            }
            Err("roomcast exited before printing `listening on http://ADDR`".to_owned())
        })
        .await
        .map_err(|_| format!("roomcast did not print `listening on` within {SERVER_WAIT:?}"))??;
        if self.addr.is_some_and(|addr| addr != found) {
            return Err(format!(
                "roomcast restarted on {found}, expected {:?}",
                self.addr
            ));
        }
        // Keep draining stdout so that the process never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                println!("roomcast: {line}");
            }
        });
        self.addr = Some(found);
        self.child = Some(child);
        Ok(format!("http://{found}"))
    }

    /// SIGTERM, then waits for a clean exit.
    async fn stop(&mut self) -> Result<(), String> {
        let mut child = self.child.take().ok_or("the server is not running")?;
        let pid = child.id().ok_or("the server already exited")?;
        let pid = i32::try_from(pid).map_err(|e| e.to_string())?;
        kill(Pid::from_raw(pid), Signal::SIGTERM).map_err(|e| format!("SIGTERM: {e}"))?;
        let status = match tokio::time::timeout(SERVER_WAIT, child.wait()).await {
            Ok(status) => status.map_err(|e| e.to_string())?,
            Err(_) => {
                let _ = child.kill().await;
                return Err(format!(
                    "roomcast did not exit within {SERVER_WAIT:?} after SIGTERM"
                ));
            }
        };
        if status.success() {
            Ok(())
        } else {
            Err(format!("roomcast exited with {status} after SIGTERM"))
        }
    }
}

/// The roomcast process the control endpoints stop and start.
type ControlledServer = Arc<Mutex<Server>>;

async fn control_stop(State(server): State<ControlledServer>) -> (StatusCode, String) {
    match server.lock().await.stop().await {
        Ok(()) => (StatusCode::OK, "stopped".into()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn control_start(State(server): State<ControlledServer>) -> (StatusCode, String) {
    match server.lock().await.start().await {
        Ok(url) => (StatusCode::OK, url),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_in_chromium() {
    let dir = browser_dir();
    check_prerequisites(&dir);

    let data = tempfile::tempdir().expect("tempdir");
    let server = Arc::new(Mutex::new(Server {
        child: None,
        addr: None,
        data_dir: data.path().to_owned(),
    }));
    let url = server
        .lock()
        .await
        .start()
        .await
        .unwrap_or_else(|e| panic!("starting roomcast dev: {e}"));

    let control = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind control");
    let control_url = format!("http://{}", control.local_addr().expect("control addr"));
    let app = Router::new()
        .route("/stop", post(control_stop))
        .route("/start", post(control_start))
        .with_state(server.clone());
    let control_task = tokio::spawn(async move { axum::serve(control, app).await });

    let screenshots = std::env::var_os("ROOMCAST_SCREENSHOT_DIR");
    let mut node = Command::new("node");
    node.args(["--test", "chat.test.mjs"])
        .current_dir(&dir)
        .env("ROOMCAST_URL", &url)
        .env("ROOMCAST_CONTROL_URL", &control_url)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(screenshots) = screenshots {
        node.env("ROOMCAST_SCREENSHOT_DIR", screenshots);
    }
    let mut node = node.spawn().expect("spawn node");
    let status = tokio::time::timeout(NODE_WAIT, node.wait()).await;
    control_task.abort();
    let mut server = server.lock().await;
    let stopped = if server.child.is_some() {
        server.stop().await
    } else {
        Ok(())
    };
    match status {
        Ok(status) => {
            let status = status.expect("wait for node");
            assert!(
                status.success(),
                "the browser test failed ({status}); its output is above"
            );
        }
        Err(_) => {
            let _ = node.kill().await;
            panic!("the browser test did not finish within {NODE_WAIT:?}; its output is above");
        }
    }
    stopped.unwrap_or_else(|e| panic!("stopping roomcast: {e}"));
}
