//! Page and email templates (askama), the static assets they use, and the small
//! formatting helpers they need.

use askama::Template;
use hyper::StatusCode;

use crate::web::{self, Resp};

#[derive(Template)]
#[template(path = "index.html")]
pub struct Index<'a> {
    pub app_name: &'a str,
    pub email: &'a str,
    pub rd: Option<&'a str>,
    pub error: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "check_email.html")]
pub struct CheckEmail<'a> {
    pub app_name: &'a str,
    pub email: &'a str,
    pub match_number: &'a str,
    pub error: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "confirm.html")]
pub struct Confirm<'a> {
    pub app_name: &'a str,
    pub email: &'a str,
    pub requested_at: String,
    pub requester: String,
    pub action: &'a str,
    pub error: Option<&'a str>,
}

/// 403 from `/verify`, shown on the protected app's host (so its links are absolute).
#[derive(Template)]
#[template(path = "forbidden.html")]
pub struct Forbidden<'a> {
    pub app_name: &'a str,
    pub public_base: &'a str,
    pub host: &'a str,
    pub email: Option<&'a str>,
    pub sign_in: &'a str,
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct Message<'a> {
    pub app_name: &'a str,
    pub title: &'a str,
    pub text: &'a str,
    pub reference: Option<&'a str>,
    pub link_href: Option<&'a str>,
    pub link_label: &'a str,
}

impl<'a> Message<'a> {
    pub fn new(app_name: &'a str, title: &'a str, text: &'a str) -> Self {
        Message {
            app_name,
            title,
            text,
            reference: None,
            link_href: None,
            link_label: "",
        }
    }
    pub fn link(mut self, href: &'a str, label: &'a str) -> Self {
        self.link_href = Some(href);
        self.link_label = label;
        self
    }
}

#[derive(Template)]
#[template(path = "email_sign_in.txt")]
pub struct SignInText<'a> {
    pub app_name: &'a str,
    pub email: &'a str,
    pub link: &'a str,
    pub code: &'a str,
    pub ttl_minutes: i64,
    pub requested_at: &'a str,
    pub requester: &'a str,
}

#[derive(Template)]
#[template(path = "email_sign_in.html")]
pub struct SignInHtml<'a> {
    pub app_name: &'a str,
    pub email: &'a str,
    pub link: &'a str,
    pub code: &'a str,
    pub ttl_minutes: i64,
    pub requested_at: &'a str,
    pub requester: &'a str,
}

/// Render a page; a template error is an internal error, never a panic.
pub fn render<T: Template>(status: StatusCode, t: &T) -> web::Result<Resp> {
    let body = t
        .render()
        .map_err(|e| crate::error::AppError::Internal(format!("template: {e}")))?;
    Ok(web::html(status, body))
}

pub const STYLE_CSS: &str = include_str!("../templates/static/style.css");
pub const WAIT_JS: &str = include_str!("../templates/static/wait.js");

/// `2026-11-28 09:14 UTC`, from Unix seconds.
pub fn utc(ts: i64) -> String {
    let (date, secs) = civil(ts);
    format!("{date} {:02}:{:02} UTC", secs / 3600, (secs % 3600) / 60)
}

/// `2026-11-28T09:14:05Z` (RFC 3339), from Unix seconds.
pub fn rfc3339(ts: i64) -> String {
    let (date, secs) = civil(ts);
    format!(
        "{date}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

/// `(YYYY-MM-DD, seconds into the day)`.
fn civil(ts: i64) -> (String, i64) {
    let days = ts.div_euclid(86400);
    let secs = ts.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (format!("{y:04}-{m:02}-{d:02}"), secs)
}

/// "Firefox on Linux (IP 192.0.2.1)": enough to recognise one's own browser.
pub fn requester(ua: &str, ip: &str) -> String {
    let browser = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("Chromium/", "Chromium"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
    ]
    .iter()
    .find(|(k, _)| ua.contains(k))
    .map(|(_, v)| *v)
    .unwrap_or("an unknown browser");
    let os = [
        ("Android", "Android"),
        ("iPhone", "iPhone"),
        ("iPad", "iPad"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("CrOS", "ChromeOS"),
        ("Linux", "Linux"),
    ]
    .iter()
    .find(|(k, _)| ua.contains(k))
    .map(|(_, v)| format!(" on {v}"))
    .unwrap_or_default();
    format!("{browser}{os} (IP address {ip})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_795_851_240), "2026-11-28 07:34 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(rfc3339(1_795_851_245), "2026-11-28T07:34:05Z");
    }

    #[test]
    fn requester_names_browser_and_os() {
        let ff = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
        assert_eq!(
            requester(ff, "192.0.2.1"),
            "Firefox on Linux (IP address 192.0.2.1)"
        );
        assert_eq!(requester("", "::1"), "an unknown browser (IP address ::1)");
    }
}
