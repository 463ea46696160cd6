//! The web UI's session and CSRF protection over plain HTTP: the log-in form goes
//! through the API's throttling and audit, the cookie is HttpOnly and SameSite (and
//! Secure behind https), a form posted without its CSRF token is refused, the API takes
//! the cookie only with the `X-CSRF-Token` header, and bearer tokens work as before.

mod common;
mod web_support;

use common::TestApp;
use haven::domain::permission::Role;
use serde_json::{json, Value};

use web_support::PASSWORD;

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The `name=value` of a `Set-Cookie` header, and the whole header.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<(String, String)> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let pair = v.split(';').next().unwrap_or("").to_string();
            (pair, v.to_string())
        })
}

/// The value of a hidden input in a page.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("{name} in {html}"))
        + marker.len();
    html[start..].split('"').next().unwrap_or("").to_string()
}

struct Session {
    cookie: String,
    set_cookie: String,
    csrf: String,
}

async fn log_in(
    app: &TestApp,
    client: &reqwest::Client,
    email: &str,
    password: &str,
) -> reqwest::Response {
    let page = client
        .get(app.url("/login"))
        .send()
        .await
        .expect("login page");
    let (login_cookie, _) = set_cookie(&page, "haven_login_csrf").expect("login csrf cookie");
    let html = page.text().await.expect("html");
    let token = hidden(&html, "csrf_token");
    client
        .post(app.url("/login"))
        .header("cookie", login_cookie)
        .form(&[
            ("csrf_token", token.as_str()),
            ("email", email),
            ("password", password),
            ("next", "/"),
        ])
        .send()
        .await
        .expect("log in")
}

async fn session(app: &TestApp, email: &str) -> Session {
    let client = no_redirects();
    let response = log_in(app, &client, email, PASSWORD).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/");
    let (cookie, set_cookie) = set_cookie(&response, "haven_session").expect("session cookie");
    let dashboard = client
        .get(app.url("/"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("dashboard");
    assert_eq!(dashboard.status(), 200);
    let html = dashboard.text().await.expect("html");
    let csrf = hidden(&html, "csrf_token");
    Session {
        cookie,
        set_cookie,
        csrf,
    }
}

async fn new_user(app: &TestApp, org: uuid::Uuid, role: Role) -> String {
    web_support::user(app, org, role).await
}

dual_test!(
    a_form_posted_without_its_csrf_token_is_refused,
    |app: TestApp| async move {
        let org = app.create_org("Clinic").await;
        let email = new_user(&app, org, Role::DataManager).await;
        let s = session(&app, &email).await;
        let client = no_redirects();
        let export = |token: Option<&str>| {
            let mut form = vec![("format", "csv"), ("when", "now"), ("fields", "id")];
            if let Some(t) = token {
                form.push(("csrf_token", t));
            }
            client
                .post(app.url("/export"))
                .header("cookie", &s.cookie)
                .form(&form)
                .send()
        };
        for token in [None, Some("00ff"), Some("not-a-token")] {
            let response = export(token).await.expect("post");
            assert_eq!(response.status(), 403, "token {token:?}");
            let html = response.text().await.expect("html");
            assert!(html.contains("security token"), "{html}");
        }
        // The token of another session is refused too.
        let other = session(&app, &email).await;
        assert_eq!(export(Some(&other.csrf)).await.expect("post").status(), 403);
        assert_eq!(
            app.count("SELECT COUNT(*) FROM bulk_operations").await,
            0,
            "nothing scheduled"
        );
        // Cancel, rollback, logout: the same.
        for path in [
            format!("/operations/{}/cancel", uuid::Uuid::now_v7()),
            "/logout".into(),
            "/notifications/read".into(),
        ] {
            let response = client
                .post(app.url(&path))
                .header("cookie", &s.cookie)
                .form(&[("x", "y")])
                .send()
                .await
                .expect("post");
            assert_eq!(response.status(), 403, "{path}");
        }
        // With its token the form goes through.
        let response = export(Some(&s.csrf)).await.expect("post");
        assert_eq!(response.status(), 303);
        assert!(response.headers()["location"]
            .to_str()
            .unwrap_or("")
            .starts_with("/?notice=scheduled&highlight="));
        assert_eq!(app.count("SELECT COUNT(*) FROM bulk_operations").await, 1);
        // The import form (multipart) checks it before the file goes anywhere.
        let form = reqwest::multipart::Form::new().text("when", "now").part(
            "file",
            reqwest::multipart::Part::text("given_name,family_name\nA,B\n").file_name("a.csv"),
        );
        let response = client
            .post(app.url("/import"))
            .header("cookie", &s.cookie)
            .multipart(form)
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 403);
        assert_eq!(app.count("SELECT COUNT(*) FROM bulk_operations").await, 1);
    }
);

dual_test!(
    the_api_takes_the_session_cookie_only_with_the_csrf_header,
    |app: TestApp| async move {
        let org = app.create_org("Clinic").await;
        let email = new_user(&app, org, Role::DataManager).await;
        let s = session(&app, &email).await;
        let me = |csrf: Option<&str>| {
            let mut request = app
                .client
                .get(app.url("/api/v2/auth/me"))
                .header("cookie", &s.cookie);
            if let Some(c) = csrf {
                request = request.header("x-csrf-token", c);
            }
            request.send()
        };
        assert_eq!(me(None).await.expect("me").status(), 401, "cookie alone");
        assert_eq!(
            me(Some("abcd")).await.expect("me").status(),
            401,
            "wrong token"
        );
        let response = me(Some(&s.csrf)).await.expect("me");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["email"], email.as_str());
        // A state-changing call with cookie and header works; without the header it does not.
        let body = json!({"format": "csv"});
        let without = app
            .client
            .post(app.url("/api/v2/bulk/export/schedule"))
            .header("cookie", &s.cookie)
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(without.status(), 401);
        let with = app
            .client
            .post(app.url("/api/v2/bulk/export/schedule"))
            .header("cookie", &s.cookie)
            .header("x-csrf-token", &s.csrf)
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(with.status(), 201);
        // Bearer tokens are unchanged.
        let token = app.user_token(org, Role::Viewer).await;
        assert_eq!(app.get(&token, "/api/v2/auth/me").await.status(), 200);
        // Logging out revokes the token behind the cookie.
        let client = no_redirects();
        let out = client
            .post(app.url("/logout"))
            .header("cookie", &s.cookie)
            .form(&[("csrf_token", s.csrf.as_str())])
            .send()
            .await
            .expect("logout");
        assert_eq!(out.status(), 303);
        let (cleared, _) = set_cookie(&out, "haven_session").expect("cleared cookie");
        assert_eq!(cleared, "haven_session=");
        assert_eq!(
            me(Some(&s.csrf)).await.expect("me").status(),
            401,
            "revoked"
        );
        let page = client
            .get(app.url("/"))
            .header("cookie", &s.cookie)
            .send()
            .await
            .expect("page");
        assert_eq!(page.status(), 303, "back to the log-in page");
    }
);

dual_test!(
    pages_send_the_session_cookie_and_security_headers_as_promised,
    |app: TestApp| async move {
        let org = app.create_org("Clinic").await;
        let email = new_user(&app, org, Role::Admin).await;
        let s = session(&app, &email).await;
        for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age="] {
            assert!(s.set_cookie.contains(attr), "{attr} in {}", s.set_cookie);
        }
        assert!(!s.set_cookie.contains("Secure"), "plain http here");
        let response = app
            .client
            .get(app.url("/"))
            .header("cookie", &s.cookie)
            .send()
            .await
            .expect("page");
        let csp = response.headers()["content-security-policy"]
            .to_str()
            .expect("csp")
            .to_string();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(response.headers()["x-frame-options"], "DENY");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let html = response.text().await.expect("html");
        assert!(
            !html.contains("<script>") && !html.contains(" style=") && !html.contains(" onclick="),
            "no inline script or style"
        );
        // Without a session, pages lead to the log-in page and keep where to come back to.
        let response = no_redirects()
            .get(app.url(&format!("/operations/{}", uuid::Uuid::now_v7())))
            .send()
            .await
            .expect("page");
        assert_eq!(response.status(), 303);
        assert!(response.headers()["location"]
            .to_str()
            .unwrap_or("")
            .starts_with("/login?next=%2Foperations%2F"));
        // Another organization's operation is a 404, as through the API.
        let other_org = app.create_org("Other").await;
        let other = app.user_token(other_org, Role::Admin).await;
        let op: Value = app.post_json(&other, "/api/v2/bulk/export/schedule", &json!({"format": "csv", "scheduled_at": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339()})).await.json().await.expect("op");
        let id = op["id"].as_str().expect("id");
        for path in [
            format!("/operations/{id}"),
            format!("/operations/{id}/row"),
            format!("/operations/{id}/download"),
        ] {
            let response = app
                .client
                .get(app.url(&path))
                .header("cookie", &s.cookie)
                .send()
                .await
                .expect("page");
            assert_eq!(response.status(), 404, "{path}");
        }
    }
);

dual_test!(
    the_cookie_is_secure_behind_an_https_public_url,
    flags = &["--public-url", "https://haven.example.org"],
    |app: TestApp| async move {
        let org = app.create_org("Clinic").await;
        let email = new_user(&app, org, Role::Viewer).await;
        let s = session(&app, &email).await;
        assert!(s.set_cookie.contains("; Secure"), "{}", s.set_cookie);
    }
);

dual_test!(
    logging_in_through_the_page_is_audited_and_throttled_like_the_api,
    |app: TestApp| async move {
        let org = app.create_org("Clinic").await;
        let email = new_user(&app, org, Role::Viewer).await;
        let client = no_redirects();
        // A log-in form posted without its own token is refused.
        let response = client
            .post(app.url("/login"))
            .form(&[("email", email.as_str()), ("password", PASSWORD)])
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 403);
        assert!(set_cookie(&response, "haven_session").is_none());
        for _ in 0..5 {
            let response = log_in(&app, &client, &email, "wrong password!").await;
            assert_eq!(response.status(), 401);
            assert!(response.text().await.expect("html").contains("not right"));
        }
        let response = log_in(&app, &client, &email, PASSWORD).await;
        assert_eq!(
            response.status(),
            429,
            "throttled after 5 failures, as the API"
        );
        assert!(response
            .text()
            .await
            .expect("html")
            .contains("Too many failed attempts"));
        assert_eq!(
            app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'auth.login' AND outcome = 'failure'").await,
            5
        );
        let other = new_user(&app, org, Role::Viewer).await;
        let _ = session(&app, &other).await;
        assert_eq!(
            app.count("SELECT COUNT(*) FROM audit_events WHERE action = 'auth.login' AND outcome = 'success' AND client_addr IS NOT NULL").await,
            1
        );
    }
);
