//! Headless Chromium for the web UI tests, driven through WebDriver: each test starts
//! its own `chromedriver` on a free port and a Chromium with a fresh profile (Debian's
//! `chromium` and `chromium-driver`, which `.ci/run` installs). Nothing is skipped: a
//! missing browser fails the test with a message saying what to install.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The password of every user the web tests create.
pub const PASSWORD: &str = "correct-horse-battery-staple";

/// How long a test waits for something the page should show.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A Chrome DevTools command sent through chromedriver (`goog/cdp/execute`).
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(json!({"cmd": self.cmd, "params": self.params}).to_string()),
        )
    }
}

/// Records, from the first render of every page on, each `section:status` an
/// operation row shows (`window.__seen[id]`), so a test sees the states a row went
/// through even before it could look.
const RECORD_ROWS: &str = "window.__seen = {};
document.addEventListener('DOMContentLoaded', function () {
  function record() {
    document.querySelectorAll('li.op').forEach(function (row) {
      var id = row.getAttribute('data-id');
      var state = row.getAttribute('data-section') + ':' + row.getAttribute('data-status');
      var list = window.__seen[id] || (window.__seen[id] = []);
      if (list[list.length - 1] !== state) { list.push(state); }
    });
  }
  record();
  new MutationObserver(record).observe(document.body, {subtree: true, childList: true, attributes: true});
});";

pub struct Browser {
    pub client: Client,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium (`width` × 900 pixels).
    pub async fn start(width: u32) -> Browser {
        assert!(
            std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists(),
            "the web UI tests need Chromium and its driver: apt-get install chromium chromium-driver"
        );
        let port = free_port();
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let mut caps = serde_json::Map::new();
        let mut options = json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars",
                format!("--user-data-dir={}", profile.path().display()),
                format!("--window-size={width},900"),
                "--lang=en-GB",
            ],
        });
        // Chromium's windows are at least 500 pixels wide: narrower screens are emulated.
        if width < 500 {
            options["mobileEmulation"] =
                json!({"deviceMetrics": {"width": width, "height": 800, "pixelRatio": 1.0}});
        }
        caps.insert("goog:chromeOptions".into(), options);
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.enforce_http(true);
        let mut last_error = None;
        for _ in 0..3 {
            match ClientBuilder::new(connector.clone())
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => {
                    client
                        .issue_cmd(Cdp {
                            cmd: "Page.addScriptToEvaluateOnNewDocument",
                            params: json!({"source": RECORD_ROWS}),
                        })
                        .await
                        .expect("install the row recorder");
                    return Browser {
                        client,
                        driver,
                        _profile: profile,
                    };
                }
                Err(e) => {
                    last_error = Some(e);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        panic!("no WebDriver session: {last_error:?}");
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    pub async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("element {css}: {e}"))
    }

    /// Elements matching now (no waiting).
    pub async fn all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .expect("find_all")
    }

    /// The text of the element, read again if the page's script replaced the element
    /// between finding and reading it (live rows are replaced on every status change).
    pub async fn text(&self, css: &str) -> String {
        let mut last = None;
        for _ in 0..40 {
            match self.find(css).await.text().await {
                Ok(text) => return text,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("text of {css}: {last:?}");
    }

    pub async fn fill(&self, css: &str, text: &str) {
        let input = self.find(css).await;
        input.clear().await.expect("clear");
        input.send_keys(text).await.expect("type");
    }

    /// Clicks the element (found again if a live update replaced it meanwhile).
    pub async fn click(&self, css: &str) {
        let mut last = None;
        for _ in 0..40 {
            match self.find(css).await.click().await {
                Ok(_) => return,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("click on {css}: {last:?}");
    }

    /// Runs a script; `arguments[0..]` are `args`.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.expect("script")
    }

    /// Waits until the script returns true; panics with `what` after [`PATIENCE`].
    pub async fn wait_for(&self, what: &str, script: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.js(script, vec![]).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let body = self.text("body").await;
                panic!("waited for {what}; the page shows:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn url(&self) -> String {
        self.client.current_url().await.expect("url").to_string()
    }

    /// Chooses "Schedule for later" at `local` (as the date-time input takes it) in `zone`.
    pub async fn schedule_later(&self, zone: &str, local: &str) {
        self.click("#when-later").await;
        self.fill("#timezone", zone).await;
        self.js(
            "document.getElementById('scheduled_local').value = arguments[0];",
            vec![json!(local)],
        )
        .await;
    }

    /// Waits for the dashboard with a highlighted (new) operation; returns its id.
    pub async fn highlighted(&self) -> String {
        self.wait_for(
            "the dashboard with the new operation highlighted",
            "return !!document.querySelector('li.highlight');",
        )
        .await;
        self.js(
            "return document.querySelector('li.highlight').getAttribute('data-id');",
            vec![],
        )
        .await
        .as_str()
        .expect("id")
        .to_string()
    }

    /// The `section:status` states the row of operation `id` has shown on this page.
    pub async fn seen(&self, id: &str) -> Value {
        self.js(
            "return (window.__seen || {})[arguments[0]] || [];",
            vec![json!(id)],
        )
        .await
    }

    /// Logs in through the log-in page and lands on the dashboard.
    pub async fn log_in(&self, base: &str, email: &str) {
        self.goto(&format!("{base}/")).await;
        self.find("#email").await;
        assert!(
            self.url().await.contains("/login"),
            "not logged in: the log-in page"
        );
        self.fill("#email", email).await;
        self.fill("#password", PASSWORD).await;
        self.click("form[action='/login'] button[type=submit]")
            .await;
        self.wait_for(
            "the dashboard",
            "return document.querySelector('h1') && document.querySelector('h1').textContent === 'Operations';",
        )
        .await;
    }

    /// Saves a screenshot of the whole page as `NAME.png` under the test's temporary
    /// target dir (`screenshots/`); returns the path. The committed ones are chosen from these.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        // The full page: from the top, the window grown to the document's height (the
        // window's own frame, if any, added).
        let (width, height) = self.client.get_window_size().await.expect("size");
        let needed = self
            .js(
                "window.scrollTo(0, 0);
                 return Math.ceil(Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)
                   + (window.outerHeight - window.innerHeight));",
                vec![],
            )
            .await
            .as_u64()
            .unwrap_or(900)
            .clamp(300, 8000);
        self.client
            .set_window_size(width as u32, needed as u32)
            .await
            .expect("resize");
        let png = self.client.screenshot().await.expect("screenshot");
        self.client
            .set_window_size(width as u32, height as u32)
            .await
            .expect("resize back");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    pub async fn close(self) {
        let Browser {
            client, mut driver, ..
        } = self;
        let _ = client.close().await;
        let _ = driver.kill().await;
    }
}

/// Creates a user of `role` in `org` with [`PASSWORD`]; returns the email, a readable
/// one (it shows in the screenshots), unique within the process.
pub async fn user(
    app: &crate::common::TestApp,
    org: uuid::Uuid,
    role: haven::domain::permission::Role,
) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    const NAMES: [&str; 8] = [
        "amina", "joseph", "fatuma", "david", "halima", "samuel", "grace", "omar",
    ];
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let round = if n < NAMES.len() {
        String::new()
    } else {
        (n / NAMES.len()).to_string()
    };
    let email = format!(
        "{}{round}.{}@kakuma-clinic.org",
        NAMES[n % NAMES.len()],
        role.as_str().replace('_', "-")
    );
    haven::app::create_user(app.store.as_ref(), org, &email, role, PASSWORD)
        .await
        .expect("create user");
    email
}

/// A CSV of `rows` valid patients (made up), with the header the samples use.
pub fn patients_csv(rows: usize) -> String {
    let mut csv =
        String::from("given_name,family_name,gender,date_of_birth,unhcr_number,current_camp\n");
    for i in 0..rows {
        csv.push_str(&format!(
            "Amina{i},Test{i},{},19{:02}-0{}-1{},WEB-{i:07},Kakuma\n",
            if i % 2 == 0 { "female" } else { "male" },
            50 + i % 50,
            1 + i % 9,
            i % 10
        ));
    }
    csv
}
